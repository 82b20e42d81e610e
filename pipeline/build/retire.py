"""Older indexes that RVC's or Applio's lookup could pick instead of a new build, and retiring them.

RVC (``get_index_path_from_model``) walks its index roots bottom-up and takes the first file whose
name ends in ``.index``, holds no "trained", and whose *path* holds the model name; Applio
(``match_index``) takes the first such file in the model's own folder (or whose name holds the
model name or its prefix before ``_``). In ``logs/<exp>/`` every other ``.index`` competes with ours,
and which one wins depends on the directory order. Retiring renames a competitor to
``<name>.index.retired``, which neither lookup lists; ``unretire`` renames it back.
"""

from __future__ import annotations

import os
from pathlib import Path

from rvc_index.errors import RvcIndexError
from rvc_index.runtime.progress import get_logger

INDEX_SUFFIX = ".index"
RETIRED_SUFFIX = ".retired"
SKIPPED_BY_LOOKUPS = "trained"  # both lookups leave out files whose name holds it


class RetireError(RvcIndexError, OSError):
    """A retired index cannot be restored (its old name is taken) or a retirement failed."""


def listed_by_lookups(name: str) -> bool:
    """True for a file name RVC's and Applio's index lists include."""
    return name.endswith(INDEX_SUFFIX) and SKIPPED_BY_LOOKUPS not in name


def competing_indexes(folder: Path, model: str, keep: Path | None = None) -> list[Path]:
    """``.index`` files under ``folder`` (links not followed) that RVC's lookup (path holds ``model``) or
    Applio's (in ``folder`` itself, or the name holds ``model``) could pick instead of ``keep``; sorted."""
    folder = Path(folder)
    found = []
    for root, _, names in os.walk(folder):
        for name in names:
            path = Path(root) / name
            if not listed_by_lookups(name) or path.is_symlink() or (keep is not None and path == Path(keep)):
                continue
            if model in str(path) or path.parent == folder:
                found.append(path)
    return sorted(found)


def retired_name(path: Path) -> Path:
    """``<name>.index.retired`` (``.retired-2``, ... when taken): a name no lookup lists."""
    candidate = path.with_name(path.name + RETIRED_SUFFIX)
    number = 2
    while os.path.lexists(candidate):
        candidate = path.with_name(f"{path.name}{RETIRED_SUFFIX}-{number}")
        number += 1
    return candidate


def retire(paths: list[Path]) -> list[tuple[Path, Path]]:
    """Rename each of ``paths`` to its retired name; (old, new) pairs. Nothing is deleted."""
    done = []
    for path in paths:
        target = retired_name(path)
        try:
            os.rename(path, target)
        except OSError as exc:
            raise RetireError(f"{path}: could not be retired to {target.name}: {exc.strerror or exc}") from exc
        done.append((path, target))
    return done


def original_name(path: Path) -> Path | None:
    """The name a retired file had (``x.index`` for ``x.index.retired`` or ``x.index.retired-2``), else None."""
    name = path.name
    head, sep, tail = name.rpartition(RETIRED_SUFFIX)
    if not sep or not head.endswith(INDEX_SUFFIX) or (tail and not (tail.startswith("-") and tail[1:].isdigit())):
        return None
    return path.with_name(head)


def unretire(folder: Path) -> list[tuple[Path, Path]]:
    """Give every retired index directly in ``folder`` its name back; (retired, restored) pairs.

    Refuses, before renaming anything, when a restored name is taken (or two retired files claim it)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RetireError(f"{folder}: no such folder")
    pairs = sorted((path, original) for path in folder.iterdir()
                   if path.is_file() and not path.is_symlink() and (original := original_name(path)) is not None)
    targets = [original for _, original in pairs]
    for path, original in pairs:
        if os.path.lexists(original) or targets.count(original) > 1:
            raise RetireError(f"{path}: cannot be restored: {original.name} exists or is claimed twice; "
                              "rename one of them by hand")
    for path, original in pairs:
        os.rename(path, original)
    return pairs


def settle_competitors(folder: Path, model: str, keep: Path, ours: list[Path], retire_old: bool,
                       found: list[Path] | None = None) -> list[str]:
    """After writing ``keep``: retire the other indexes RVC's or Applio's lookup could pick (``retire_old``)
    or say how to; ``ours`` (this build's superseded files) are left alone. ``found``: the competitors
    already listed by ``competing_indexes`` (else the folder is walked). Returns the retired names."""
    log = get_logger()
    candidates = competing_indexes(folder, model) if found is None else found
    others = [p for p in candidates if p != Path(keep) and p not in ours]
    if not others:
        return []
    names = ", ".join(str(p.relative_to(folder)) for p in others)
    if not retire_old:
        log.warning("%s: RVC's or Applio's lookup may load an older index instead of %s: %s. --retire-old "
                    "(output.retire_old) renames them to *.index.retired, deleting nothing (undo: rvc-index "
                    "unretire %s)", model, Path(keep).name, names, folder)
        return []
    done = retire(others)
    log.warning("%s: retired %d older index file(s) so RVC and Applio load %s: %s (undo: rvc-index unretire %s)",
                model, len(done), Path(keep).name, ", ".join(f"{a.name} -> {b.name}" for a, b in done), folder)
    return [str(new.relative_to(folder)) for _, new in done]
