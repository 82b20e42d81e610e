"""One step of the GPU slot (``benchmarks/gpu_slot.sh``): a command under its own time limit.

The command runs in a process group of its own; a step that runs out of time is stopped with every
process it started, those that left its group too (``bench_kmeans`` measures its children in sessions of
their own): SIGTERM, then SIGKILL 10 s later. Writes
``NAME.json`` (command, exit code, wall seconds, whether it timed out, the peak RSS of its largest
process) beside ``NAME.log`` (its output), and prints one line.

    python -m benchmarks.slot_step RESULTS/NAME SECONDS COMMAND...
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

GRACE_S = 10.0


def _signal(group: int, processes: list[psutil.Process], sig: int) -> None:
    """``sig`` to the step's process group and to each of ``processes`` still alive."""
    for target in processes:
        with contextlib.suppress(psutil.Error):
            target.send_signal(sig)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, sig)


def run_step(prefix: Path, limit_s: float, cmd: list[str]) -> dict:
    """Run ``cmd`` for at most ``limit_s`` seconds; its record (also written to ``prefix``.json)."""
    started = time.perf_counter()
    timed_out = False
    with open(f"{prefix}.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(limit_s, 1.0))
        except subprocess.TimeoutExpired:
            timed_out = True
            tree = psutil.Process(proc.pid).children(recursive=True)  # before the group goes: its sessions too
            _signal(proc.pid, tree, signal.SIGTERM)
            _, alive = psutil.wait_procs(tree, timeout=GRACE_S)
            try:
                rc = proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                rc = None
            _signal(proc.pid, alive, signal.SIGKILL)
            rc = proc.wait() if rc is None else rc
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    record = {"cmd": cmd, "rc": rc, "seconds": round(time.perf_counter() - started, 2), "timed_out": timed_out,
              "limit_s": round(limit_s), "max_rss_mib": round(peak_mib)}
    Path(f"{prefix}.json").write_text(json.dumps(record) + "\n")
    return record


def main(argv: list[str]) -> int:
    prefix, limit_s, cmd = Path(argv[0]), float(argv[1]), argv[2:]
    record = run_step(prefix, limit_s, cmd)
    state = "timed out" if record["timed_out"] else f"exit {record['rc']}"
    print(f"{prefix.name}: {state}, {record['seconds']:.1f} s, peak RSS {record['max_rss_mib']:,} MiB", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
