"""The house: sub-packages by layer, imports only downward, no cycles, light lower layers, and the stricter
rules: compute reads neither config nor data; evaluation, batch and the faces never reach into a stage."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pipeline"
# Lowest first; a module may import its own layer or any layer below it, never one above.
LAYERS = ["errors", "runtime", "config", "inspection", "data", "compute", "stages", "evaluation", "job", "batch",
          "tools", "api", "cli", "__main__"]
RANK = {name: i for i, name in enumerate(LAYERS)}
RANK["tools"] = RANK["batch"]  # generators and RVC's checker: beside batch, used by the CLI and tests


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__") or "__init__"


def imports_of(path: Path) -> set[str]:
    """rvc_index modules imported anywhere in ``path`` (top level or inside functions), as dotted names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rvc_index"):
            base = node.module.removeprefix("rvc_index").lstrip(".")
            for alias in node.names:
                candidate = f"{base}.{alias.name}" if base else alias.name
                found.add(candidate if (PACKAGE / candidate.replace(".", "/")).with_suffix(".py").exists()
                          or (PACKAGE / candidate.replace(".", "/")).is_dir() else base)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("rvc_index.") for a in node.names if a.name.startswith("rvc_index.")}
    return {name for name in found if name}


MODULES = {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def layer(module: str) -> str:
    return module.split(".")[0]


def test_every_module_sits_in_a_known_layer():
    unknown = {m for m in MODULES if m != "__init__" and layer(m) not in RANK}
    assert not unknown


def test_no_import_runs_up_a_layer():
    upward = [(m, i) for m, imported in MODULES.items() if m != "__init__"
              for i in imported if RANK.get(layer(i), -1) > RANK[layer(m)]]
    assert not upward, upward


def test_no_import_cycle():
    graph = {m: {i for i in imported if i in MODULES} for m, imported in MODULES.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                pytest.fail(f"import cycle: {' -> '.join(path[path.index(nxt):] + [nxt])}")
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer(m) == "compute"))
def test_compute_reads_neither_config_nor_data(module):
    """Array code takes arrays and plain settings: the stages read the config and the data and hand them over."""
    assert not {i for i in MODULES[module] if layer(i) in ("config", "data")}


@pytest.mark.parametrize("owner", ["evaluation", "batch", "tools", "api", "cli", "__main__"])
def test_evaluation_batch_and_the_faces_never_import_a_stage(owner):
    """What they need of an index (its lists, its description, the rows RVC's k needs) is in inspection/; a
    build's stages run only through job/."""
    reaching = {(m, i) for m, imported in MODULES.items() if layer(m) == owner for i in imported
                if layer(i) == "stages"}
    assert not reaching


def test_the_layers_hold_every_sub_package():
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()} == {
        name for name in LAYERS if (PACKAGE / name).is_dir()}


def test_posix_only_modules_are_never_imported_at_top_level():
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = {a.name for n in top if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in top if isinstance(n, ast.ImportFrom) and n.module}
        assert not names & {"resource", "fcntl", "pwd", "grp", "termios"}, path


def test_lower_layers_pull_in_no_cluster_code_and_no_cli():
    code = ("import sys, rvc_index.compute.lloyd, rvc_index.config.loading, rvc_index.data.sources, "
            "rvc_index.stages.compress; "
            "print(sorted(m for m in ('distributed', 'rvc_index.cli', 'rvc_index.batch.jobs', 'matplotlib', "
            "'sklearn', 'benchmarks') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_the_package_never_imports_the_benchmarks():
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("benchmarks"), path
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("benchmarks") for a in node.names), path


def test_a_local_build_never_imports_dask(make_experiment, tmp_path):
    """Without a cluster the chunks load on threads: dask (0.25 s of every start) stays unimported."""
    exp = make_experiment("nodask", 3000, 256)
    code = ("import sys; from rvc_index.cli import main; "
            f"code = main(['build', {str(exp)!r}, '--out', {str(tmp_path / 'o')!r}]); "
            "print(code, sorted(m for m in ('dask', 'dask.array', 'distributed') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "0 []", done.stderr
