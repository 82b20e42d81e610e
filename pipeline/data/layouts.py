"""Where an experiment's features live: RVC's and Applio's folder layouts, in one place.

RVC writes ``logs/<exp>/3_feature256`` (v1, 256-D) or ``logs/<exp>/3_feature768`` (v2, 768-D); Applio writes
``logs/<model>/extracted``. Any other folder of ``.npy`` files is taken as it is. Both tools ship folders of
their own in ``logs/`` (``mute``: the silence mixed into every training file list, with 3_feature256 and
3_feature768; Applio's ``mute_spin``, ``mute_spin-v2``: its ``extracted`` silence): no voice, never an experiment
of a batch. ``build`` (``resolve_experiment``) and ``batch`` (``find_experiments``) both read these rules here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from rvc_index.data.files import SourceError, broken_link
from rvc_index.runtime.progress import get_logger

FEATURE_DIRS = {"3_feature256": ("v1", 256), "3_feature768": ("v2", 768)}
VERSION_BY_DIM = {256: "v1", 768: "v2"}
APPLIO_FEATURES = "extracted"  # Applio: logs/<model>/extracted/*.npy, index at logs/<model>/<model>.index
TOOL_FOLDERS = re.compile(r"mute(_spin(-v\d+)?)?")  # logs/mute (RVC, Applio), logs/mute_spin[-v2] (Applio)


def feature_dir_name(dim: int) -> str:
    """RVC's feature folder for a width: 3_feature256 (v1), 3_feature768 (v2), else 3_feature<D>."""
    return f"3_feature{dim}"


@dataclass(frozen=True)
class Experiment:
    """Where an experiment's features live and what they should look like."""

    name: str
    feature_dir: Path
    exp_dir: Path  # RVC's logs/<exp> folder: the default output folder
    version: str | None  # v1 / v2 from the folder name, None when the folder is not RVC's
    expected_dim: int | None


def _has_npy(folder: Path) -> bool:
    return folder.is_dir() and any(name.endswith(".npy") for name in os.listdir(folder))


def resolve_experiment(path: str | Path) -> Experiment:
    """Accept ``<exp>``, ``<exp>/3_feature256|768``, Applio's ``<model>`` or ``<model>/extracted``, or any
    folder of ``.npy`` files."""
    path = Path(path).expanduser().absolute()
    if not path.exists():
        raise SourceError(f"{path}: {broken_link(path) or 'no such folder'}")
    if not path.is_dir():
        raise SourceError(f"{path}: not a folder")
    if path.name in FEATURE_DIRS:
        version, dim = FEATURE_DIRS[path.name]
        return Experiment(path.parent.name, path, path.parent, version, dim)
    if path.name == APPLIO_FEATURES:  # Applio's logs/<model>/extracted: named after the model folder
        return Experiment(path.parent.name, path, path.parent, None, None)
    for name in FEATURE_DIRS:
        broken = broken_link(path / name)
        if broken:
            raise SourceError(f"{path / name}: {broken}")
    candidates = [path / name for name in FEATURE_DIRS if _has_npy(path / name)]
    if len(candidates) > 1:
        raise SourceError(
            f"{path}: holds both 3_feature256 (v1) and 3_feature768 (v2) features; "
            "pass the one feature folder to index"
        )
    if candidates:
        version, dim = FEATURE_DIRS[candidates[0].name]
        return Experiment(path.name, candidates[0], path, version, dim)
    if any((path / name).is_dir() for name in FEATURE_DIRS):
        empty = [name for name in FEATURE_DIRS if (path / name).is_dir()]
        raise SourceError(f"{path / empty[0]}: folder holds no .npy feature files")
    if _has_npy(path / APPLIO_FEATURES) and not _has_npy(path):
        return Experiment(path.name, path / APPLIO_FEATURES, path, None, None)
    return Experiment(path.name, path, path.parent, None, None)


def is_experiment(folder: Path) -> bool:
    """An experiment folder of RVC's or Applio's layout: a ``3_feature256``, ``3_feature768`` or ``extracted``
    folder inside."""
    return any((folder / name).is_dir() for name in (*FEATURE_DIRS, APPLIO_FEATURES))


def find_experiments(root: str | Path) -> list[Path]:
    """The experiment folders under ``root`` (RVC's or Applio's ``logs/``) in name order, the tools' own
    ``mute`` folders left out; ``root`` itself when it is one."""
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise SourceError(f"{root}: no such folder")
    if is_experiment(root):
        return [root]
    found, tools = [], []
    for path in sorted(root.iterdir()):
        if path.is_dir() and is_experiment(path):
            (tools if TOOL_FOLDERS.fullmatch(path.name) else found).append(path)
    if tools:
        get_logger().info("%s: left out %s: RVC's and Applio's own silence, not a voice", root,
                          ", ".join(p.name for p in tools))
    if not found:
        raise SourceError(f"{root}: no experiments (<exp>/3_feature256, <exp>/3_feature768 or Applio's "
                          "<model>/extracted) found")
    return found
