"""Which index RVC's and Applio's lookups load after a build, and retiring the older ones.

The lookups are re-implemented from their sources (RVC 20240604 ``infer/modules/vc/utils.py``
``get_index_path_from_model``; Applio ``tabs/inference/inference.py`` ``get_indexes``/``match_index``):
a directory's entries come in the file system's order, so each lookup is run with the names in
sorted and in reversed order: a competitor that either order lets win is a real risk.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from rvc_index.cli import main
from rvc_index.compute.backend import select_backend
from rvc_index.config.loading import load_config, resolve_config_path
from rvc_index.job.retire import MANIFEST_NAME, competing_indexes, original_name, retire, unretire
from rvc_index.job.runner import build_experiment
from rvc_index.tools.synth import SpeakerSpec, write_speaker

FAST = ["evaluate.recall_queries=0", "evaluate.plot=false"]
RVC_OWN = "added_IVF1538_Flat_nprobe_1_myvoice_v2.index"  # what RVC's train_index writes
RVC_TRAINED = "trained_IVF1538_Flat_nprobe_1_myvoice_v2.index"


def walk(root: Path, topdown: bool, reverse: bool):
    """os.walk with each directory's file names in sorted or reversed order (the OS decides which)."""
    for folder, dirs, files in os.walk(root, topdown=topdown):
        yield folder, dirs, sorted(files, reverse=reverse)


def rvc_lookup(logs: Path, sid: str, reverse: bool) -> str:
    """RVC: first ``.index`` (no "trained") on a bottom-up walk whose path holds the model name."""
    return next((f for f in [os.path.join(root, name) for root, _, files in walk(logs, False, reverse)
                             for name in files if name.endswith(".index") and "trained" not in name]
                 if sid.split(".")[0] in f), "")


def applio_lookup(logs: Path, model_file: str, reverse: bool) -> str:
    """Applio: first listed index in the model's folder, or whose name holds the model name or its prefix."""
    indexes = [os.path.join(d, f) for d, _, files in walk(logs, True, reverse) for f in files
               if f.endswith(".index") and "trained" not in f]
    model_folder, model_name = os.path.dirname(model_file), os.path.basename(model_file)
    match = re.match(r"^(.*?)_", model_name)
    for index_file in indexes:
        if (os.path.dirname(index_file) == model_folder or (match and match.group(1) in os.path.basename(index_file))
                or model_name in os.path.basename(index_file)):
            return index_file
    return ""


def picks(logs: Path, exp: str) -> set[str]:
    """Every file either lookup can load for ``exp`` (both orders)."""
    model = str(logs / exp / f"{exp}_200e_4000s.pth")  # Applio keeps the model in the experiment folder
    return {Path(lookup).name for reverse in (False, True)
            for lookup in (rvc_lookup(logs, f"{exp}.pth", reverse), applio_lookup(logs, model, reverse))}


@pytest.fixture
def logs(tmp_path) -> Path:
    root = tmp_path / "logs"
    write_speaker(root, SpeakerSpec("myvoice", 1500, 768))
    for name in (RVC_OWN, RVC_TRAINED):
        (root / "myvoice" / name).write_bytes(b"an older index")
    return root


def config(*extra: str):
    return load_config(resolve_config_path("rvc-classic"), [*FAST, *extra])


def test_without_retiring_the_lookups_can_load_the_old_index(logs, caplog):
    result = build_experiment(logs / "myvoice", config(), backend=select_backend("cpu"))
    assert picks(logs, "myvoice") == {RVC_OWN, result.index_path.name}  # which one depends on the directory order
    assert f"may load an older index instead of {result.index_path.name}: {RVC_OWN}" in caplog.text
    assert "--retire-old" in caplog.text and (logs / "myvoice" / RVC_OWN).exists()


def test_retire_old_makes_both_lookups_load_the_new_index_and_unretire_undoes_it(logs, capsys):
    folder = logs / "myvoice"
    args = ["build", str(folder), "--config", "rvc-classic", "--backend", "cpu", "--retire-old",
            *[a for item in FAST for a in ("--set", item)]]
    assert main(args) == 0
    ours = next(p.name for p in folder.glob("*.index"))
    assert picks(logs, "myvoice") == {ours}
    assert sorted(p.name for p in folder.iterdir() if ".index" in p.name) == sorted(
        [ours, RVC_OWN + ".retired", RVC_TRAINED])  # trained_ is skipped by both lookups: left alone
    assert (folder / (RVC_OWN + ".retired")).read_bytes() == b"an older index"  # renamed, not deleted
    report = next(folder.glob("rvc-index-*.report.json")).read_text()
    assert RVC_OWN + ".retired" in report
    capsys.readouterr()
    assert main(["unretire", str(folder)]) == 0
    assert f"{RVC_OWN}.retired -> {RVC_OWN}" in capsys.readouterr().out
    assert (folder / RVC_OWN).read_bytes() == b"an older index"


def test_competitors_in_subfolders_and_names(tmp_path):
    folder = tmp_path / "logs" / "alice"
    (folder / "extracted").mkdir(parents=True)
    for name in ("alice.index", "extracted/old.index", "trained_alice.index", "notes.txt", "alice.index.retired"):
        (folder / name).write_text("x")
    found = competing_indexes(folder, "alice")
    assert [p.relative_to(folder).as_posix() for p in found] == ["alice.index", "extracted/old.index"]
    done = retire(found)
    assert [new.name for _, new in done] == ["alice.index.retired-2", "old.index.retired"]
    assert original_name(folder / "alice.index.retired-2") == folder / "alice.index"
    assert original_name(folder / "alice.index.retired-x") is None
    (folder / "alice.index").write_text("new")
    with pytest.raises(OSError, match="cannot be restored"):
        unretire(folder)  # alice.index is taken: nothing is renamed
    assert (folder / "alice.index").read_text() == "new" and (folder / "alice.index.retired").exists()


def _build(exp: Path, *args: str) -> int:
    return main(["-q", "build", str(exp), "--config", "rvc-classic", "--backend", "cpu", "--retire-old",
                 *[a for item in FAST for a in ("--set", item)], *args])


def test_retiring_stays_with_this_voice_in_a_shared_folder(tmp_path):
    """Issue 24 B: RVC's ``assets/indices`` (reached with --index-path) and a shared --out hold other voices'
    indexes: only files named for this voice are retired, never one another experiment's report names."""
    logs = tmp_path / "logs"
    for name in ("alice", "alice-tips", "bob"):
        write_speaker(logs, SpeakerSpec(name, 1200, 256))
    indices = tmp_path / "assets" / "indices"
    indices.mkdir(parents=True)
    theirs = ["bob.index", "bob_IVF40_Flat_nprobe_1_bob_v1.index", "alice-tips.index", "notes_alice.index"]
    mine = "alice_IVF40_Flat_nprobe_1_alice_v1.index"  # RVC's link of alice's old index
    for name in [*theirs, mine]:
        (indices / name).write_text(name)
    assert _build(logs / "alice", "--index-path", str(indices / "alice.index")) == 0
    assert sorted(p.name for p in indices.glob("*.index*")) == sorted([*theirs, "alice.index", mine + ".retired"])

    shared = tmp_path / "shared"
    for name in ("alice-tips", "bob"):  # their reports name their indexes (which hold "alice" / sit beside)
        assert _build(logs / name, "--out", str(shared)) == 0
    built = sorted(p.name for p in shared.glob("*.index"))
    (shared / "added_IVF40_Flat_nprobe_1_alice_v1.index").write_text("alice's, by RVC")
    assert _build(logs / "alice", "--out", str(shared)) == 0
    left = sorted(p.name for p in shared.glob("*.index"))
    assert set(built) < set(left) and len(left) == 3  # the other two experiments' indexes stay
    assert [p.name for p in shared.glob("*.retired")] == ["added_IVF40_Flat_nprobe_1_alice_v1.index.retired"]


def test_a_folder_reached_by_two_names_is_one_experiment_in_a_batch(tmp_path, client, capsys):
    """Issue 24 B: ``logs/alias -> alice``: built under both names, each build retired the other's index, so
    every rerun rebuilt and ``.retired`` copies piled up. Now it is built once, and a rerun skips it."""
    logs = tmp_path / "logs"
    write_speaker(logs, SpeakerSpec("alice", 1200, 256))
    (logs / "alias").symlink_to(logs / "alice", target_is_directory=True)
    args = ["-q", "batch", str(logs), "--config", "rvc-classic", "--cluster", client.scheduler.address,
            "--backend", "cpu", "--retire-old", *[a for item in FAST for a in ("--set", item)]]
    for status in ("built", "skipped"):
        assert main(args) == 0
        report = json.loads((logs / "batch_report.json").read_text())
        assert [(r["experiment"], r["status"]) for r in report["experiments"]] == [("alice", status)]
    assert len(list((logs / "alice").glob("*.index"))) == 1 and not list((logs / "alice").rglob("*.retired*"))
    assert "the same folder as" in capsys.readouterr().err


def test_unretire_restores_everything_a_build_retired_including_subfolders(logs, capsys):
    """Issue 24 B: an old index in a subfolder was retired and ``unretire`` then restored 0 files. What a build
    retires is recorded beside its reports; ``unretire`` restores it all (and older versions' ``.retired``)."""
    folder = logs / "myvoice"
    (folder / "old" / "deep").mkdir(parents=True)
    (folder / "old" / "deep" / "myvoice_v1.index").write_text("older still")
    (folder / "old" / "left.index.retired").write_text("retired by an older version")
    assert _build(folder) == 0
    record = json.loads((folder / MANIFEST_NAME).read_text())["retired"]
    assert sorted(e["original"] for e in record) == sorted(["old/deep/myvoice_v1.index", RVC_OWN])
    assert all(e["by"] == "myvoice (rvc-classic)" for e in record)
    capsys.readouterr()
    assert main(["unretire", str(folder)]) == 0
    printed = capsys.readouterr().out
    assert "old/deep/myvoice_v1.index.retired -> myvoice_v1.index" in printed and "3 restored in" in printed
    assert (folder / "old" / "deep" / "myvoice_v1.index").read_text() == "older still"
    assert (folder / RVC_OWN).read_bytes() == b"an older index" and (folder / "old" / "left.index").exists()
    assert not list(folder.rglob("*.retired*")) and not (folder / MANIFEST_NAME).exists()
    assert main(["unretire", str(folder)]) == 0 and "0 restored in" in capsys.readouterr().out


def test_an_older_index_whose_layout_breaks_a_tool_is_named(tmp_path, caplog):
    """An earlier release's `…PQ…x4fs_RFlat…` index beside the voice: the build says which tools it breaks (and
    --retire-old retires it, as any competitor)."""
    import faiss
    import numpy as np
    from rvc_index.tools.synth import sample_frames

    write_speaker(tmp_path / "logs", SpeakerSpec("myvoice", 2000, 256))
    exp = tmp_path / "logs" / "myvoice"
    old = faiss.index_factory(256, "IVF16,PQ128x4fs,RFlat")
    x = sample_frames(2000, 256, seed=2)
    old.train(x)
    old.add(x)
    name = "added_IVF16_PQ128x4fs_RFlat_tips-plain_nprobe_5_myvoice_v1.index"
    faiss.write_index(old, str(exp / name))
    with caplog.at_level("WARNING", logger="rvc_index"):
        build_experiment(exp, load_config("tips-plain", FAST), backend=select_backend("cpu"))
    said = [r.getMessage() for r in caplog.records if name in r.getMessage() and "breaks" in r.getMessage()]
    assert said and "applio-realtime" in said[0] and "deiteris" in said[0] and "no nprobe" in said[0]
    np.testing.assert_equal((exp / name).is_file(), True)  # named, not touched without --retire-old
