"""The output folder's build lock: links never followed, a fallback where flock is missing, and none."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from rvc_index.cli import main
from rvc_index.job.locks import HOLDER_NAME, LOCK_NAME, LockError, OutputBusy, output_lock
from rvc_index.tools.synth import SpeakerSpec, write_speaker

REPO = Path(__file__).resolve().parents[2]
POSIX = pytest.mark.skipif(sys.platform == "win32", reason="flock and SIGKILL: POSIX")

# A process on a filesystem without flock: every flock call fails with ENOSYS, as on Lustre or some NFS.
NO_FLOCK = textwrap.dedent("""
    import errno, fcntl, sys, time
    def no_flock(fd, op):
        raise OSError(errno.ENOSYS, "Function not implemented")
    fcntl.flock = no_flock
    from rvc_index.job.locks import OutputBusy, output_lock
    from pathlib import Path
    try:
        with output_lock(Path(sys.argv[1]), sys.argv[2]):
            print("held", flush=True)
            time.sleep(float(sys.argv[3]))
    except OutputBusy as exc:
        print("busy:", exc, flush=True)
""")


def test_a_link_in_place_of_the_lock_is_refused_and_its_target_untouched(tmp_path, capsys):
    write_speaker(tmp_path / "logs", SpeakerSpec("spk", 600, 256))
    folder = tmp_path / "logs" / "spk"
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    (folder / LOCK_NAME).symlink_to(victim)
    with pytest.raises(LockError, match="symbolic link"), output_lock(folder):
        pass
    assert main(["build", str(folder), "--backend", "cpu", "--set", "evaluate.recall_queries=0"]) == 1
    assert "never follows links" in capsys.readouterr().err
    assert victim.read_text() == "keep me\n" and not list(folder.glob("*.index"))
    (folder / HOLDER_NAME).symlink_to(victim)  # the holder note replaces a link, never writes through it
    (folder / LOCK_NAME).unlink()
    with output_lock(folder):
        holder = folder / HOLDER_NAME
        assert not holder.is_symlink() and f"pid {os.getpid()} on " in holder.read_text()
    assert victim.read_text() == "keep me\n" and not (folder / HOLDER_NAME).exists()


def test_refuse_names_the_holder_and_none_takes_no_lock(tmp_path, caplog):
    with output_lock(tmp_path, "wait"):
        with pytest.raises(OutputBusy, match=rf"another build \(pid {os.getpid()} on .*safety.lock=refuse"):
            with output_lock(tmp_path, "refuse"):
                pass
        with output_lock(tmp_path, "none") as path:  # no lock: it does not wait for the holder
            assert path is None
    assert "safety.lock=none: no build lock" in caplog.text


@POSIX
def test_without_flock_a_marker_file_locks_and_a_dead_holders_marker_is_taken_over(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", NO_FLOCK, str(tmp_path), "wait", "60"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        marker = (tmp_path / LOCK_NAME).read_text()
        assert str(holder.pid) in marker.split()  # pid and host recorded in the marker
        busy = subprocess.run([sys.executable, "-c", NO_FLOCK, str(tmp_path), "refuse", "0"], capture_output=True,
                              text=True, env=env, timeout=60)
        assert f"busy: {tmp_path}: another build (pid {holder.pid} on " in busy.stdout, busy.stdout + busy.stderr
        assert "does not support flock; locking with a marker file" in busy.stderr
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    assert (tmp_path / LOCK_NAME).exists()  # the killed holder's marker stays ...
    started = time.monotonic()
    after = subprocess.run([sys.executable, "-c", NO_FLOCK, str(tmp_path), "wait", "0"], capture_output=True,
                           text=True, env=env, timeout=60)
    assert after.stdout.strip() == "held" and time.monotonic() - started < 30  # ... and is taken over
    assert not (tmp_path / LOCK_NAME).exists()  # released: a marker lock is removed
