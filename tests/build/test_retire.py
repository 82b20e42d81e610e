"""Which index RVC's and Applio's lookups load after a build, and retiring the older ones.

The lookups are re-implemented from their sources (RVC 20240604 ``infer/modules/vc/utils.py``
``get_index_path_from_model``; Applio ``tabs/inference/inference.py`` ``get_indexes``/``match_index``):
a directory's entries come in the file system's order, so each lookup is run with the names in
sorted and in reversed order: a competitor that either order lets win is a real risk.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from rvc_index.build.retire import competing_indexes, original_name, retire, unretire
from rvc_index.build.runner import build_experiment
from rvc_index.cli import main
from rvc_index.compute.backend import select_backend
from rvc_index.config.loading import load_config, resolve_config_path
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
