"""Windows and macOS: no POSIX-only module at import time; a whole build where they do not exist;
and a clear one-line error when faiss (an extra) is not installed."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from rvc_index.tools.synth import SpeakerSpec, write_speaker

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "pipeline"
POSIX_ONLY = {"resource", "fcntl", "termios", "pwd", "grp", "posix", "msvcrt", "winreg"}  # msvcrt/winreg: Windows-only
POSIX_SIGNALS = ("SIGUSR1", "SIGUSR2", "SIGHUP", "SIGKILL", "SIGALRM", "SIGCHLD", "SIGQUIT")
LINUX_ONLY = {"batch/jobs.py"}  # batch (SLURM signals) may stay POSIX-only; build/inspect/eval/tune/synth may not

# Run the CLI where our package cannot import the POSIX-only modules and the POSIX-only signals do not
# exist. Third-party packages keep their own (Linux) platform backends: on Windows they load others.
WITHOUT_POSIX = textwrap.dedent(f"""
    import builtins, signal, sys
    BLOCKED = {sorted(POSIX_ONLY - {"posix"})!r}
    real_import = builtins.__import__
    def windows_import(name, globals=None, locals=None, fromlist=(), level=0):
        if name.split(".")[0] in BLOCKED and (globals or {{}}).get("__name__", "").startswith("rvc_index"):
            raise ModuleNotFoundError(f"No module named {{name!r}} (as on Windows)", name=name)
        return real_import(name, globals, locals, fromlist, level)
    builtins.__import__ = windows_import
    for name in {POSIX_SIGNALS!r}:
        if hasattr(signal, name):
            delattr(signal, name)
    from rvc_index.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _top_level_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, module) of imports and ``signal.SIG*`` uses run at import time, outside an OS guard."""
    found: list[tuple[int, str]] = []

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "platform" in ast.unparse(node.test) or isinstance(node, ast.Try):
                continue  # guarded by the OS check or an ImportError handler
            if isinstance(node, ast.Import):
                found.extend((node.lineno, alias.name.split(".")[0]) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.append((node.lineno, node.module.split(".")[0]))
            elif isinstance(node, ast.If):
                visit(node.body + node.orelse)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):  # defaults run at import time
                expressions = [*node.args.defaults, *node.args.kw_defaults, *node.decorator_list]
            elif isinstance(node, ast.ClassDef):
                expressions = [n for n in node.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.Expr)):
                expressions = [node]
            else:
                expressions = []
            for expression in expressions:
                for sub in ast.walk(expression) if expression is not None else ():
                    if isinstance(sub, ast.Attribute) and sub.attr in POSIX_SIGNALS:
                        found.append((sub.lineno, f"signal.{sub.attr}"))

    visit(tree.body)
    return found


def test_no_module_imports_posix_only_modules_at_import_time():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative in LINUX_ONLY:
            continue
        for line, name in _top_level_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if name in POSIX_ONLY or name.startswith("signal."):
                offenders.append(f"pipeline/{relative}:{line}: {name}")
    assert offenders == [], "import these inside the function that needs them, behind an OS check"


def test_the_check_sees_a_top_level_import():
    tree = ast.parse("import os\nimport resource\nif sys.platform == 'win32':\n    import msvcrt\n"
                     "def f(s=(signal.SIGUSR1,)):\n    import fcntl\n")
    assert _top_level_imports(tree) == [(1, "os"), (2, "resource"), (5, "signal.SIGUSR1")]


def _cli(*args: str, code: str = WITHOUT_POSIX) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)


def test_build_inspect_and_eval_run_without_posix_modules(tmp_path):
    write_speaker(tmp_path / "logs", SpeakerSpec("win", 1500, 256))
    exp = tmp_path / "logs" / "win"
    proc = _cli("build", str(exp), "--backend", "cpu", "--set", "evaluate.recall_queries=100",
                "--set", "evaluate.plot=false")
    assert proc.returncode == 0, proc.stderr
    index = next(exp.glob("*.index"))
    assert "verdict:" in proc.stderr
    inspected = _cli("inspect", str(index))
    assert inspected.returncode == 0 and '"ntotal": 1500' in inspected.stdout, inspected.stderr
    evaluated = _cli("eval", str(index), str(exp), "--backend", "cpu", "--no-sweep", "--max-queries", "100")
    assert evaluated.returncode == 0 and "recall@8" in evaluated.stdout, evaluated.stderr


def test_without_faiss_one_line_names_the_extra(tmp_path):
    no_faiss = "import sys\nsys.modules['faiss'] = None\n" + WITHOUT_POSIX
    proc = _cli("build", str(tmp_path), code=no_faiss)
    assert proc.returncode == 1
    assert 'pip install "rvc-index[cpu]"' in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
