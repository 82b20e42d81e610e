"""The public Python API (rvc_index.api): folders, arrays, presets by name, evaluation, progress, a wheel."""

import json
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import zipfile
from pathlib import Path

import faiss
import numpy as np
import pytest
import rvc_index
from rvc_index.tools.synth import utterances

REPO = Path(__file__).resolve().parent.parent
FAST = ["evaluate.plot=false"]


def test_the_package_exports_exactly_the_api():
    assert set(rvc_index.__all__) == {"__version__", "build_index", "build_batch", "preview_batch", "load_preset",
                                      "evaluate_index", "tune_index", "BuildResult", "BuildRecord", "BatchReport",
                                      "Evaluation", "ProgressEvent", "RvcIndexError"}
    with pytest.raises(AttributeError):
        rvc_index.build_experiment  # noqa: B018 - internal, not exported


def test_the_command_line_is_the_api_plus_printing():
    """Each command is one call of the API and its printing: no use-case logic in the face; one default preset
    and one spelling of the backend choices, the same as the compute layer's."""
    import ast
    import typing

    from rvc_index import api, cli
    from rvc_index.compute.backend import BackendName
    from rvc_index.config.loading import DEFAULT_PRESET

    source = (REPO / "pipeline" / "cli.py").read_text(encoding="utf-8")
    commands = {n.name: n for n in ast.parse(source).body
                if isinstance(n, ast.FunctionDef) and n.name.startswith("cmd_")}
    assert set(commands) == {f"cmd_{name}" for name in cli.COMMANDS}
    for name in ("cmd_build", "cmd_batch", "cmd_eval", "cmd_tune"):
        called = {node.func.id for node in ast.walk(commands[name]) if isinstance(node, ast.Call)
                  and isinstance(node.func, ast.Name)}
        assert called & {"build_index", "build_batch", "preview_batch", "evaluate_index", "tune_index"}, name
    assert all(node.end_lineno - node.lineno < 22 for node in commands.values())
    assert api.BACKENDS == typing.get_args(BackendName) == ("auto", "cpu", "gpu")
    assert '"tips-plain"' not in source and cli.make_parser().parse_args(["tune", "x"]).config == DEFAULT_PRESET


def test_tune_and_preview_through_the_api(tmp_path):
    logs = tmp_path / "logs"
    (logs / "spk" / "extracted").mkdir(parents=True)  # Applio's layout
    for i, utterance in enumerate(utterances(6000, 64, [4, 64])):
        np.save(logs / "spk" / "extracted" / f"{i:04d}.npy", utterance)
    previews = rvc_index.preview_batch(logs, preset="tips", backend="cpu")
    assert [(p.experiment, p.action) for p in previews] == [("spk", "build")]
    assert any(line.startswith("expansion: alpha 3 over 8 neighbours") for line in previews[0].plan)
    tuned = rvc_index.tune_index(logs / "spk", tmp_path / "t.yaml", overrides=["expand.enabled=false"],
                                 min_recall=0.8, quick=True, backend="cpu", max_queries=200)
    assert tuned.chosen.recall_at_k >= 0.8 and tuned.preset_file == tmp_path / "t.yaml"
    assert rvc_index.load_preset(tuned.preset_file).index.lists == tuned.chosen.lists
    with pytest.raises(rvc_index.RvcIndexError, match="no configuration met the target"):
        rvc_index.tune_index(logs / "spk", min_recall=1.0, max_us_per_frame=0.001, quick=True, backend="cpu",
                             overrides=["expand.enabled=false"], max_queries=200)
    with pytest.raises(rvc_index.RvcIndexError, match="backend must be 'auto' or 'cpu' or 'gpu'"):
        rvc_index.preview_batch(logs, backend="tpu")


def test_presets_load_by_name_and_unknown_ones_are_named():
    assert rvc_index.load_preset().name == "tips-plain"
    assert rvc_index.load_preset("tips", ["index.nprobe=4"]).index.nprobe == 4
    with pytest.raises(rvc_index.RvcIndexError, match="no-such-preset"):
        rvc_index.load_preset("no-such-preset")


def test_build_from_a_folder_with_progress_then_evaluate(make_experiment):
    exp = make_experiment("api", 4000, 256)
    events = []
    result = rvc_index.build_index(exp, overrides=FAST, progress=events.append, backend="cpu")
    assert result.status == "built" and result.index_path.parent == exp and result.record.rows == 4000
    assert {e.kind for e in events} >= {"start", "done"} and any(e.label.endswith("train") for e in events)
    quality = rvc_index.evaluate_index(result.index_path, exp, sweep=False, max_queries=200, backend="cpu")
    assert quality.recall_at_k > 0.9 and quality.index.ntotal == 4000


def test_build_from_an_array(tmp_path):
    frames = np.concatenate(list(utterances(3000, 256, [1, 256])))[:3000]
    result = rvc_index.build_index(frames, tmp_path / "out", name="arrayvoice", overrides=FAST, backend="cpu")
    index = faiss.read_index(str(result.index_path))
    assert index.ntotal == 3000 and "arrayvoice" in result.index_path.name
    np.testing.assert_allclose(np.sort(index.reconstruct_n(0, 3000), axis=0), np.sort(frames, axis=0), atol=1e-5)
    with pytest.raises(rvc_index.RvcIndexError, match="name="):
        rvc_index.build_index(frames, tmp_path / "out")
    with pytest.raises(rvc_index.RvcIndexError, match="float"):
        rvc_index.build_index(np.zeros((10, 4), dtype=np.int32), tmp_path / "out", name="x")


class Tensor:
    """A tensor-like object that numpy reads through ``__array__`` (a CPU torch tensor), or cannot (a CUDA one)."""

    def __init__(self, rows: np.ndarray, on_device: bool = False) -> None:
        self.rows, self.on_device = rows, on_device

    def __array__(self, dtype=None, copy=None):
        if self.on_device:
            raise TypeError("can't convert cuda:0 device type tensor to numpy")
        return self.rows if dtype is None else self.rows.astype(dtype)


def test_the_array_api_takes_array_likes_and_names_rows_of_the_array(tmp_path, monkeypatch):
    """Issue 24 G: a list, a memoryview or a tensor was read as a path (TypeError: expected str), overrides as
    a str letter by letter; rows were staged in TMPDIR (a full TMPDIR gave a raw OSError) and errors named
    those files, already deleted. Now: array-likes build, wrong types are refused by name, errors name rows
    of "the array", and nothing is written outside the output folder."""
    temp = tmp_path / "tmpdir"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # TMPDIR: must stay empty
    frames = np.concatenate(list(utterances(1200, 256, [2, 256])))[:1200]
    out = tmp_path / "out"
    for source in (frames.tolist(), memoryview(frames), Tensor(frames)):
        result = rvc_index.build_index(source, out, name="likes", overrides=FAST, backend="cpu", force=True)
        assert faiss.read_index(str(result.index_path)).ntotal == 1200, type(source)
    refused = [(dict(source=Tensor(frames, on_device=True)), "source Tensor is neither a folder"),
               (dict(source=frames[:, 0]), "must be a non-empty float [N, D] array, got float32 of shape (1200,)"),
               (dict(source=frames, overrides="index.nprobe=4"), "overrides must be a list of 'section.key=value'"),
               (dict(source=frames, preset=7), "preset must be a preset name, a YAML path or a Config, got int 7"),
               (dict(source=frames, out=3.5), "out must be a folder path or None, got float 3.5"),
               (dict(source=frames, force="yes"), "force must be True or False"),
               (dict(source=frames, progress="print"), "progress must be a callable")]
    for given, message in refused:
        with pytest.raises(rvc_index.RvcIndexError) as caught:
            rvc_index.build_index(**{"out": out, "name": "likes", "backend": "cpu", **given})
        assert message in str(caught.value) and "\n" not in str(caught.value), str(caught.value)
    with pytest.raises(TypeError, match="build_batch: only must be a list of glob patterns"):
        rvc_index.build_batch(tmp_path, only="spk*")
    huge = frames.copy()
    huge[1000] *= 1e18
    with pytest.raises(rvc_index.RvcIndexError, match=r"^the array: row 1000 holds a value of magnitude"):
        rvc_index.build_index(huge, out, name="huge", overrides=FAST, backend="cpu")
    few = np.full((20, 256), np.nan, np.float32)
    few[[2, 9, 15]] = frames[:3]
    with pytest.raises(rvc_index.RvcIndexError) as caught:
        rvc_index.build_index(few, out, name="few", overrides=FAST, backend="cpu")
    assert "only 3 rows in the array" in str(caught.value) and ".npy" not in str(caught.value)
    assert list(temp.iterdir()) == [] and not [p for p in out.iterdir() if p.name.startswith(".rvc-index-array")]


def test_a_full_disk_while_staging_the_array_is_the_usual_write_error(tmp_path):
    """The rows are staged inside the output folder: past the file size limit, the usual one-line write error."""
    script = textwrap.dedent(f"""
        import resource, signal
        import numpy as np, rvc_index
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
        rows = np.random.default_rng(0).standard_normal((3000, 256)).astype(np.float32)
        try:
            rvc_index.build_index(rows, {str(tmp_path / "out")!r}, name="full", backend="cpu")
        except rvc_index.RvcIndexError as exc:
            print(type(exc).__name__, exc)
        """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert "OutputWriteError " in run.stdout and "the array could not be written there for the build (File too " \
        "large); nothing was replaced, no partial file left" in run.stdout, run.stdout + run.stderr[-2000:]
    assert [p.name for p in (tmp_path / "out").iterdir()] == []


@pytest.mark.slow
def test_a_wheel_installs_alone_and_builds_with_a_shipped_preset(make_experiment, tmp_path):
    """`pip install .` without the checkout: presets ship inside, benchmarks do not, the API and CLI work."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "-w", str(wheels), str(REPO)], check=True, capture_output=True)
    wheel = next(wheels.glob("rvc_index-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "rvc_index/presets/tips-plain.yaml" in names and not any(n.startswith("benchmarks/") for n in names)
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.run([env / "bin" / "python", "-c", where], capture_output=True, text=True,
                               check=True).stdout.strip())
    zipfile.ZipFile(wheel).extractall(site)  # a pure wheel installs by unpacking
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # numpy, faiss, dask: not rvc_index
    exp = make_experiment("wheelvoice", 3000, 256)
    script = textwrap.dedent(f"""
        import json, rvc_index
        assert "site-packages" in rvc_index.__file__, rvc_index.__file__
        result = rvc_index.build_index({str(exp)!r}, {str(tmp_path / "api")!r}, preset="tips",
                                       overrides=["evaluate.plot=false"])
        print(json.dumps({{"index": str(result.index_path), "rows": result.record.rows}}))
    """)
    run = subprocess.run([env / "bin" / "python", "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout.splitlines()[-1])["rows"] == 3000
    cli = subprocess.run([env / "bin" / "python", "-m", "rvc_index", "build", str(exp), "--config", "tips",
                          "--out", str(tmp_path / "cli"), "--set", "evaluate.plot=false"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert list((tmp_path / "cli").glob("*.index"))


def test_build_batch_over_a_root_isolates_a_bad_experiment(make_experiment, client, tmp_path):
    root = tmp_path / "logs"
    make_experiment("one", 2500, 256, root=root)
    make_experiment("two", 2500, 256, root=root)
    bad = root / "bad" / "3_feature256"
    bad.mkdir(parents=True)
    (bad / "000.npy").write_bytes(b"not an array")
    report = rvc_index.build_batch(root, tmp_path / "out", overrides=FAST, cluster=client.scheduler.address,
                                   backend="cpu")
    statuses = {r.experiment: r.status for r in report.records}
    assert statuses == {"one": "built", "two": "built", "bad": "failed"} and report.exit_code == 1
    assert len(list((tmp_path / "out").glob("*/*.index"))) == 2
