"""Older indexes that RVC's or Applio's lookup could pick for a voice instead of a new build, and retiring them.

The lookups (read from their code): RVC 20240604 (``infer/modules/vc/utils.py``
``get_index_path_from_model``) walks ``index_root`` (``logs``) bottom-up and takes the first file whose
name ends in ``.index``, holds no "trained", and whose *path* holds the model name; RVC's main takes the
first whose path holds ``logs/<model>/`` (``assets/indices``, its ``outside_index_root``, is listed but
never picked). Applio (``tabs/inference/inference.py`` ``match_index``) takes the first in the model's
own folder ``logs/<model>``, or whose *name* holds the model name (or its part before the first ``_``).

So what competes for a voice: in its own folder (an output folder, or a folder under it, named after the
voice) every index; in a folder several voices share (``--out``, RVC's ``assets/indices``) the indexes
whose file name names this voice as RVC, Applio or rvc-index name them (``<voice>.index``,
``…_nprobe_<p>_<voice>_<v1|v2>.index``). Never a file another experiment's report names, and never a
link. Retiring renames a competitor to ``<name>.index.retired``, which no lookup lists, and records it in
``rvc-index-retired.json`` beside the reports; ``unretire`` gives every retired file its name back.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Sequence
from pathlib import Path

from rvc_index.errors import RvcIndexError
from rvc_index.inspection.consumers import file_problems
from rvc_index.inspection.rvc_files import INDEX_SUFFIX, listed_by_lookups
from rvc_index.runtime.outputs import read_json, write_json_atomic
from rvc_index.runtime.progress import get_logger

RETIRED_SUFFIX = ".retired"
MANIFEST_NAME = "rvc-index-retired.json"  # what builds retired in a folder (relative paths), for unretire
REPORT_PREFIX, REPORT_SUFFIX = "rvc-index-", ".report.json"  # build.naming.BuildFiles.report
RVC_PATTERN = re.compile(r"_nprobe_\d+_(?P<voice>.+)_(?:v\d+|d\d+)\.index$")  # RVC's, its links' and ours


class RetireError(RvcIndexError, OSError):
    """A retired index cannot be restored (its old name is taken) or a retirement failed."""


def voice_named(file_name: str) -> str:
    """The voice an index file's name names: ``…_nprobe_<p>_<voice>_<v1|v2>.index`` (RVC, rvc-index), else
    ``<voice>.index`` (Applio)."""
    match = RVC_PATTERN.search(file_name)
    return match["voice"] if match else file_name[:-len(INDEX_SUFFIX)]


def claimed_by_others(folder: Path, file_names: Sequence[str], voices: Sequence[str]) -> set[str]:
    """Index file names in ``folder`` that a report there of another experiment names (a report that
    names no experiment counts as another's)."""
    claimed = set()
    for name in file_names:
        if name.startswith(REPORT_PREFIX) and name.endswith(REPORT_SUFFIX):
            report = read_json(folder / name) or {}
            if report.get("experiment") not in voices and isinstance(report.get("index_file"), str):
                claimed.add(report["index_file"])
    return claimed


def competing_indexes(folder: Path, voice: str | Sequence[str], keep: Path | None = None) -> list[Path]:
    """``.index`` files under ``folder`` (links not followed) that RVC's or Applio's lookup could pick for
    ``voice`` (its names: the experiment's, and the ASCII one its files carry) instead of ``keep``: every
    index in a folder named after the voice, else those whose name names it; never one another
    experiment's report names. Sorted."""
    folder = Path(folder)
    voices = (voice,) if isinstance(voice, str) else tuple(voice)
    found = []
    for root, _, names in os.walk(folder):
        here = Path(root)
        own = any(part in voices for part in (folder.name, *here.relative_to(folder).parts))
        claimed = claimed_by_others(here, names, voices)
        for name in names:
            path = here / name
            if (not listed_by_lookups(name) or name in claimed or path.is_symlink()
                    or (keep is not None and path == Path(keep))):
                continue
            if own or voice_named(name) in voices:
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


def read_manifest(folder: Path) -> list[dict[str, str]]:
    """The entries of ``folder``'s retirement record (``original``, ``retired``: paths relative to it, inside it)."""
    entries = (read_json(Path(folder) / MANIFEST_NAME) or {}).get("retired")
    return [e for e in entries if isinstance(e, dict) and all(_inside(e.get(key)) for key in ("original", "retired"))
            ] if isinstance(entries, list) else []


def _inside(relative: object) -> bool:
    """A relative path that stays inside its folder (no ``..``, not absolute)."""
    return (isinstance(relative, str) and relative != "" and not os.path.isabs(relative)
            and ".." not in Path(relative).parts)


def _write_manifest(folder: Path, entries: list[dict[str, str]]) -> None:
    path = Path(folder) / MANIFEST_NAME
    if entries:
        write_json_atomic(path, {"retired": entries})
    else:
        path.unlink(missing_ok=True)


def retire(paths: list[Path], folder: Path | None = None, by: str = "") -> list[tuple[Path, Path]]:
    """Rename each of ``paths`` to its retired name; (old, new) pairs. Nothing is deleted. With ``folder``
    (above every path) each renaming is added to its record, by ``by``, for ``unretire``."""
    done = []
    try:
        for path in paths:
            target = retired_name(path)
            try:
                os.rename(path, target)
            except OSError as exc:
                raise RetireError(f"{path}: could not be retired to {target.name}: {exc.strerror or exc}") from exc
            done.append((path, target))
    finally:
        if folder is not None and done:
            when = datetime.datetime.now().isoformat(timespec="seconds")
            _write_manifest(folder, read_manifest(folder) + [
                {"original": old.relative_to(folder).as_posix(), "retired": new.relative_to(folder).as_posix(),
                 "by": by, "at": when} for old, new in done])
    return done


def original_name(path: Path) -> Path | None:
    """The name a retired file had (``x.index`` for ``x.index.retired`` or ``x.index.retired-2``), else None."""
    name = path.name
    head, sep, tail = name.rpartition(RETIRED_SUFFIX)
    if not sep or not head.endswith(INDEX_SUFFIX) or (tail and not (tail.startswith("-") and tail[1:].isdigit())):
        return None
    return path.with_name(head)


def retired_files(folder: Path) -> list[tuple[Path, Path]]:
    """(retired, original) of every retired index under ``folder``: its record's entries whose file is
    there, and any other ``*.index.retired`` under it (links not followed; retired by an older version)."""
    pairs = {folder / e["retired"]: folder / e["original"] for e in read_manifest(folder)}
    pairs = {r: o for r, o in pairs.items() if r.is_file() and not r.is_symlink()}
    for root, _, names in os.walk(folder):
        for name in names:
            path = Path(root) / name
            if path not in pairs and not path.is_symlink() and (original := original_name(path)) is not None:
                pairs[path] = original
    return sorted(pairs.items())


def unretire(folder: Path) -> list[tuple[Path, Path]]:
    """Give every retired index under ``folder`` its name back (``retired_files``); (retired, restored) pairs.

    Refuses, before renaming anything, when a restored name is taken (or two retired files claim it)."""
    folder = Path(folder).absolute()
    if not folder.is_dir():
        raise RetireError(f"{folder}: no such folder")
    pairs = retired_files(folder)
    targets = [original for _, original in pairs]
    for path, original in pairs:
        if os.path.lexists(original) or targets.count(original) > 1:
            raise RetireError(f"{path}: cannot be restored: {original.name} exists or is claimed twice; "
                              "rename one of them by hand")
    restored = []
    try:
        for path, original in pairs:
            os.rename(path, original)
            restored.append((path, original))
    finally:
        back = {p.relative_to(folder).as_posix() for p, _ in restored}
        _write_manifest(folder, [e for e in read_manifest(folder) if e["retired"] not in back
                                 and (folder / e["retired"]).is_file()])
    return restored


def settle_competitors(folder: Path, voice: str | Sequence[str], keep: Path, ours: list[Path], retire_old: bool,
                       found: list[Path] | None = None, by: str = "") -> list[str]:
    """After writing ``keep``: retire the other indexes RVC's or Applio's lookup could pick for ``voice``
    (``retire_old``) or say how to; ``ours`` (this build's superseded files) are left alone. ``found``: the
    competitors already listed by ``competing_indexes`` (else the folder is walked). Returns the retired
    names (relative to ``folder``)."""
    log = get_logger()
    model = voice if isinstance(voice, str) else voice[0]
    candidates = competing_indexes(folder, voice) if found is None else found
    others = [p for p in candidates if p != Path(keep) and p not in ours]
    if not others:
        return []
    names = ", ".join(str(p.relative_to(folder)) for p in others)
    for path in others:  # a layout some tool cannot use is worth a line of its own
        broken = file_problems(str(path))
        if broken:
            log.warning("%s: %s breaks %s: %s", model, path.relative_to(folder), ", ".join(broken),
                        "; ".join(dict.fromkeys(broken.values())))
    if not retire_old:
        log.warning("%s: RVC's or Applio's lookup may load an older index instead of %s: %s. --retire-old "
                    "(output.retire_old) renames them to *.index.retired, deleting nothing (undo: rvc-index "
                    "unretire %s)", model, Path(keep).name, names, folder)
        return []
    done = retire(others, folder, by or model)
    log.warning("%s: retired %d older index file(s) so RVC and Applio load %s: %s (undo: rvc-index unretire %s)",
                model, len(done), Path(keep).name,
                ", ".join(f"{a.relative_to(folder)} -> {b.name}" for a, b in done), folder)
    return [str(new.relative_to(folder)) for _, new in done]
