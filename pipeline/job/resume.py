"""Resume: the fingerprint of a build (inputs, resolved config, code) and the finished build it names.

A build's report is written last and records its fingerprint; a rerun whose fingerprint matches a
report whose index file is intact skips the work.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

from rvc_index import __version__
from rvc_index.config.loading import dump_config, load_config
from rvc_index.config.schema import ClusterConfig, Config, ConfigError, SafetyConfig
from rvc_index.data.sources import Manifest
from rvc_index.job.naming import BuildFiles, is_plain_name
from rvc_index.job.record import BuildRecord
from rvc_index.runtime.outputs import read_json

# The layers whose code decides what a build writes (vectors, index, file names): whole folders,
# so a module added to one of them is covered without a list to keep. Editing the CLI, batch
# orchestration, evaluation, reports, locks or the memory guard leaves finished outputs valid
# (runtime/ is hashed whole: the compute and stage modules import its progress and memory helpers).
OUTPUT_LAYERS = ("compute", "config", "data", "inspection", "runtime", "stages", "job/plan.py", "job/naming.py",
                 "job/runner.py", "job/vectors.py")
PACKAGE_DIR = Path(__file__).resolve().parent.parent


def output_sources() -> list[Path]:
    """The source files hashed into the code fingerprint, in a stable order."""
    files: list[Path] = []
    for layer in OUTPUT_LAYERS:
        path = PACKAGE_DIR / layer
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.is_file() else []
    return files


@functools.cache  # the sources do not change within a process: hashed once
def code_fingerprint() -> str:
    """Package version plus a hash of the layers that decide the output: changing them invalidates
    finished outputs."""
    digest = hashlib.sha256(__version__.encode())
    for path in output_sources():
        digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode())
        digest.update(path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


def config_fingerprint(config: Config) -> str:
    """sha256 of the resolved config, less ``cluster``, ``safety`` and ``output.retire_old`` (where and
    how guarded a build runs, and what it does to other files, do not change its output)."""
    neutral = replace(config, cluster=ClusterConfig(), safety=SafetyConfig(),
                      output=replace(config.output, retire_old=False))
    return hashlib.sha256(dump_config(neutral).encode()).hexdigest()


def build_fingerprint(manifest: Manifest, config_fp: str, code_fp: str) -> str:
    """Inputs (file names, sizes, mtimes) + resolved config (``config_fingerprint``) + code
    (``code_fingerprint``): equal means same output."""
    text = "\n".join([manifest.fingerprint(), config_fp, code_fp])
    return hashlib.sha256(text.encode()).hexdigest()


def written_with(config_file: Path, config_fp: str) -> bool:
    """True when the resolved config written beside an index has ``config_fp`` (cluster settings aside)."""
    try:
        return config_fingerprint(load_config(config_file)) == config_fp
    except ConfigError:
        return False


def read_report(path: Path) -> dict[str, Any] | None:
    """A build report, or None when it is missing or unreadable."""
    return read_json(path)


def finished_build(report: dict[str, Any] | None, files: BuildFiles, fingerprint: str) -> BuildRecord | None:
    """The record of ``report`` (this experiment's and preset's, or None) if it records this fingerprint and its
    index file, a plain name in the output folder, is intact; None otherwise (an older or foreign report too)."""
    if report is None or report.get("fingerprint") != fingerprint or not is_plain_name(report.get("index_file")):
        return None
    index_file = files.index(report["index_file"])
    if not index_file.is_file() or index_file.stat().st_size != report.get("index_bytes"):
        return None
    return BuildRecord.read(report)
