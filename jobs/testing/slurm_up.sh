#!/usr/bin/env bash
# A throwaway single-node SLURM on this machine, for the tests: munged + slurmctld + slurmd, run
# as root from a state folder of their own (config, keys, sockets, spool, logs, PIDs), on free
# ports, with no cgroups (proctrack/linuxproc, task/none) and no accounting database.
#
#   jobs/testing/slurm_up.sh STATE_DIR      # prints SLURM_CONF=STATE_DIR/slurm.conf when the node is idle
#   SLURM_CONF=STATE_DIR/slurm.conf sbatch ...
#   jobs/testing/slurm_down.sh STATE_DIR    # stops the daemons by their PIDs
#
# Partitions: "debug" (default) and "gpu", both on this one node (no GRES: nothing here is a GPU).
# Needs root and Debian's slurm-wlm and munge packages (`make system` installs them).
# Exit 2: cannot run here (the reason on stderr); 1: did not come up (its logs are in STATE_DIR/log).
set -euo pipefail

state=${1:?usage: jobs/testing/slurm_up.sh STATE_DIR}
timeout_s=${RVC_INDEX_SLURM_TIMEOUT:-60}
unavailable() { echo "slurm_up: $*" >&2; exit 2; }
((EUID == 0)) || unavailable "needs root (slurmd runs jobs as their user; the daemons here run as root)"
for tool in munged slurmctld slurmd sbatch scontrol sinfo; do
    command -v "$tool" >/dev/null 2>&1 || unavailable "$tool not found: apt-get install slurm-wlm munge (make system)"
done

mkdir -p "$state"
state=$(cd "$state" && pwd)
mkdir -p "$state"/{munge,spool,ctld,log}
chmod 700 "$state/munge"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
ctld_port=$(free_port)
slurmd_port=$(free_port)
while [[ $slurmd_port == "$ctld_port" ]]; do slurmd_port=$(free_port); done

node=$(hostname -s)
# slurmd -C: what this machine has; take a little less memory than it reports, as slurmd checks it
read -r cpus memory < <(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*RealMemory=\([0-9]*\).*/\1 \2/p')
memory=$((memory * 9 / 10))

# munge: a key of our own; the socket lives in the state folder
dd if=/dev/urandom of="$state/munge/munge.key" bs=1 count=1024 status=none
chmod 400 "$state/munge/munge.key"
socket=$state/munge/munge.socket
munged --force --key-file="$state/munge/munge.key" --socket="$socket" --pid-file="$state/munge/munged.pid" \
    --log-file="$state/log/munged.log" --seed-file="$state/munge/munged.seed" --num-threads=2
for _ in $(seq 50); do [[ -S $socket ]] && break; sleep 0.1; done
[[ -S $socket ]] || { echo "slurm_up: munged did not start: $(tail -n 3 "$state/log/munged.log")" >&2; exit 1; }

cat >"$state/slurm.conf" <<CONF
ClusterName=rvcindextest
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$socket
CredType=cred/munge
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=600
SchedulerParameters=sched_interval=2
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$node MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$state/slurm.conf

setsid slurmctld -D -i -f "$SLURM_CONF" >"$state/log/slurmctld.out" 2>&1 < /dev/null &
echo $! >"$state/slurmctld.daemon-pid"
setsid slurmd -D -N "$node" -f "$SLURM_CONF" >"$state/log/slurmd.out" 2>&1 < /dev/null &
echo $! >"$state/slurmd.daemon-pid"

deadline=$((SECONDS + timeout_s))
until [[ $(sinfo -h -n "$node" -o %T 2>/dev/null) == idle ]]; do
    if ((SECONDS > deadline)); then
        echo "slurm_up: the node did not become idle within ${timeout_s}s; logs in $state/log:" >&2
        tail -n 5 "$state"/log/slurmctld.log "$state"/log/slurmd.log >&2 || true
        exit 1
    fi
    for daemon in slurmctld slurmd; do
        kill -0 "$(cat "$state/$daemon.daemon-pid")" 2>/dev/null || {
            echo "slurm_up: $daemon exited: $(tail -n 5 "$state/log/$daemon.out" 2>&1)" >&2
            exit 1
        }
    done
    sleep 0.2
done
echo "SLURM_CONF=$SLURM_CONF"
