"""A half-installed faiss-gpu (its NVIDIA CUDA wheels missing) must not take CPU runs down.

The stand-in is the real faiss 1.15 package of this environment (faiss-cpu: every file linked, nothing
rewritten) plus the ``_gpu_build`` marker that faiss's GPU wheels ship. faiss-cpu's ``__init__.py`` is the
same as faiss-gpu's: with the marker it preloads ``nvidia-cuda-runtime-cu12`` and raises the very
``RuntimeError`` a ``pip install --no-deps faiss-gpu`` raises (checked below). Without the extension module
it stands for a faiss-gpu whose extension cannot load without CUDA either (``libcudart.so.12`` missing).
"""

import subprocess
import sys
from pathlib import Path

import faiss
import pytest

REAL = Path(faiss.__file__).parent


def half_installed(root: Path, extension: bool = True) -> Path:
    """A folder that puts a faiss-gpu without its CUDA wheels first on sys.path."""
    package = root / "faiss"
    package.mkdir(parents=True)
    for entry in REAL.iterdir():
        if entry.name != "__pycache__" and (extension or not entry.name.startswith("_swigfaiss")):
            (package / entry.name).symlink_to(entry)
    (package / "_gpu_build.py").write_text("")  # what faiss's GPU wheels ship: it turns the CUDA preload on
    libs = REAL.parent / "faiss_cpu.libs"  # the extension's $ORIGIN/../faiss_cpu.libs
    if libs.is_dir():
        (root / "faiss_cpu.libs").symlink_to(libs)
    return root


def run(path: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={"PYTHONPATH": str(path), "PATH": "/usr/bin:/bin", "HOME": str(cwd)})


def test_the_stand_in_fails_like_a_half_installed_faiss_gpu(tmp_path):
    proc = run(half_installed(tmp_path / "site"), "-c", "import faiss", cwd=tmp_path)
    assert proc.returncode == 1
    assert "RuntimeError: faiss-gpu installed but nvidia-cuda-runtime-cu12 is missing" in proc.stderr


def test_a_cpu_build_falls_back_in_one_line(tmp_path, make_experiment):
    site = half_installed(tmp_path / "site")
    experiment = make_experiment("spk", 3000, dim=256)
    probe = run(site, "-c", "import rvc_index, faiss; print(faiss.__file__, faiss.IndexFlatL2(8).d)", cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == [str(site / "faiss" / "__init__.py"), "8"]  # the half-installed one, working
    proc = run(site, "-m", "rvc_index", "build", str(experiment), "--backend", "cpu", "--out", str(tmp_path / "out"),
               "--set", "evaluate.recall_queries=0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if "faiss-gpu is installed without its CUDA wheels" in line]
    assert len(warned) == 1 and "pip install 'rvc-index[gpu]'" in warned[0], proc.stderr
    assert list((tmp_path / "out").glob("*.index"))


@pytest.mark.parametrize("command", [["build", "EXP", "--backend", "cpu"], ["inspect", "x.index"]])
def test_a_faiss_that_cannot_load_at_all_is_one_line_naming_the_fix(tmp_path, make_experiment, command):
    site = half_installed(tmp_path / "site", extension=False)
    experiment = make_experiment("spk", 500, dim=256)
    proc = run(site, "-m", "rvc_index", *[str(experiment) if c == "EXP" else c for c in command], cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "faiss cannot be imported: faiss-gpu is installed without its CUDA" in lines[0]
    assert "pip install 'rvc-index[gpu]'" in lines[0] and "rvc-index[cpu]" in lines[0]
