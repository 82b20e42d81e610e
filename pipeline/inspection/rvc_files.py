"""RVC's and Applio's file rules, in one place: which names their index lookups list, the word they rewrite,
RVC's stored-vectors file, and the checks a build's output place and names must pass before any work.

Read from their code (docs/consumers.md): both lookups list files ending in ``.index`` and leave out those whose
name holds ``trained``; both rewrite ``trained`` to ``added`` in an index path when loading, so an index with
``trained`` in its path or name is never found. ``total_fea.npy`` is the float32 copy of an index's stored vectors
that older RVC writes beside it (and ``output.write_total_fea``): never an utterance's features.
"""

from __future__ import annotations

import os
from pathlib import Path

from rvc_index.errors import RvcIndexError

INDEX_SUFFIX = ".index"
REWRITTEN = "trained"  # RVC and Applio rewrite it to "added" when loading, and skip such files in lookups
TOTAL_FEA = "total_fea.npy"
MAX_STEM_BYTES = 160  # index names add <= 81 bytes (layout, nprobe, version, temp suffix) to stay under 255


class OutputError(RvcIndexError, RuntimeError):
    """The output place cannot take this build (not writable, 'trained' in the path, taken)."""


def listed_by_lookups(name: str) -> bool:
    """True for a file name RVC's and Applio's index lists include."""
    return name.endswith(INDEX_SUFFIX) and REWRITTEN not in name


def check_output_dir(out_dir: Path) -> None:
    """Refuse an output folder RVC rewrites or this user cannot write, creating it, before any work is spent."""
    if REWRITTEN in str(out_dir):
        raise OutputError(f"{out_dir}: '{REWRITTEN}' in the output path; RVC and Applio rewrite it to "
                          "'added' when loading, so the index would never be found")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot create output folder: {exc.strerror or exc}") from exc
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise OutputError(f"{out_dir}: output folder is not writable")


def check_stem(name: str, stem: str) -> None:
    """Refuse the experiment ``name`` when ``stem``, the name its index files carry, is one RVC rewrites or too
    long for a file name (255 bytes): before any work, not at the write."""
    size = len(stem.encode("utf-8", "surrogateescape"))
    if size > MAX_STEM_BYTES:
        raise OutputError(f"{stem[:40]}...: the experiment name is {size} bytes; index file names carry it and "
                          f"must stay under 255 bytes, so at most {MAX_STEM_BYTES}: rename the experiment folder")
    if REWRITTEN in stem:
        raise OutputError(f"{name}: '{REWRITTEN}' in the experiment name, so in the index file name; RVC and "
                          "Applio rewrite it to 'added' when loading, so the index would never be found: "
                          "rename the experiment")


def check_index_path(path: Path) -> None:
    """Refuse an index path (``--index-path``) RVC's and Applio's lookups would never list."""
    if not path.name.endswith(INDEX_SUFFIX) or path.name == INDEX_SUFFIX:
        raise OutputError(f"{path}: an index path must name a '<something>{INDEX_SUFFIX}' file (RVC and Applio "
                          f"only list files ending in {INDEX_SUFFIX})")
    if REWRITTEN in path.name:
        raise OutputError(f"{path}: '{REWRITTEN}' in the index file name; RVC and Applio rewrite it to "
                          "'added' when loading, so the index would never be found")
