#!/usr/bin/env bash
# Stop what jobs/testing/slurm_up.sh STATE_DIR started: cancel its jobs, then slurmd, slurmctld
# and munged, each by the PID it recorded; wait until they are gone (SIGKILL after 15 s).
set -uo pipefail

state=${1:?usage: jobs/testing/slurm_down.sh STATE_DIR}
[[ -d $state ]] || exit 0
export SLURM_CONF=$state/slurm.conf
if [[ -f $SLURM_CONF ]] && command -v scancel >/dev/null 2>&1; then
    timeout 10 scancel --quiet --full --signal=KILL --state=RUNNING,PENDING,SUSPENDED -u root 2>/dev/null || true
fi

stop() {  # stop PID, SIGKILL after 15 s
    local pid=$1
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
}
for daemon in slurmd slurmctld; do
    [[ -f $state/$daemon.daemon-pid ]] && stop "$(cat "$state/$daemon.daemon-pid")"
done
[[ -f $state/munge/munged.pid ]] && stop "$(cat "$state/munge/munged.pid")"
exit 0
