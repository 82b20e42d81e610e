"""Names of what a build writes: the experiment's name as file names carry it, the index file name that
RVC's and Applio's lookups find (docs/consumers.md; their file rules: ``inspection.rvc_files``), and the files
beside the index (resolved config, report, picture), one set per experiment and preset so that builds of several
experiments or presets into one folder never read or replace each other's."""

from __future__ import annotations

import dataclasses
import hashlib
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rvc_index.config.schema import Config
from rvc_index.data.layouts import Experiment
from rvc_index.inspection.rvc_files import INDEX_SUFFIX, OutputError, check_index_path, check_stem
from rvc_index.runtime.outputs import read_json
from rvc_index.runtime.progress import get_logger
from rvc_index.stages.indexing import IndexPlan


def ascii_name(name: str) -> str:
    """``name`` if ASCII, else its ASCII transliteration (NFKD, accents dropped) + ``-`` + 8 hex
    digits of its hash, so that two names never meet: RVC's GUI and faiss on Windows refuse
    non-ASCII paths."""
    if name.isascii():
        return name
    base = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().strip()
    base = " ".join(base.split())
    return f"{base or 'exp'}-{hashlib.sha256(name.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"


def file_stem(name: str, config: Config) -> str:
    """The experiment's name as index file names carry it (ASCII unless ``output.ascii_names`` is off)."""
    return ascii_name(name) if config.output.ascii_names else name


def check_names(name: str, out: Path, config: Config) -> None:
    """Refuse a name RVC would rewrite; warn about paths RVC's GUI and faiss on Windows cannot open."""
    stem = file_stem(name, config)
    check_stem(name, stem)
    if stem != name:
        get_logger().warning("%s: not ASCII: RVC's GUI and faiss on Windows refuse such paths; the index file is "
                             "named with '%s' (output.ascii_names)", name, stem)
    if not str(out).isascii():
        get_logger().warning("%s: output folder is not ASCII: RVC's GUI and faiss on Windows cannot open an index "
                             "there; pass --out with an ASCII path", out)


@dataclass(frozen=True)
class BuildFiles:
    """The files one build of one experiment with one preset keeps beside its index."""

    out: Path
    stem: str
    preset: str

    def _named(self, suffix: str) -> Path:
        return self.out / f"rvc-index-{self.stem}-{self.preset}.{suffix}"

    @property
    def report(self) -> Path:
        """Written last: its presence with a matching fingerprint means the build is done."""
        return self._named("report.json")

    @property
    def config(self) -> Path:
        return self._named("config.yaml")

    @property
    def picture(self) -> Path:
        return self._named("report.png")

    def index(self, name: str) -> Path:
        """An index file named by a report: a plain file name in this folder, never a path elsewhere."""
        if not is_plain_name(name):
            raise OutputError(f"{self.report}: index_file {name!r} is not a plain file name in {self.out}")
        return self.out / name


def build_files(out: Path, experiment: str, config: Config) -> BuildFiles:
    return BuildFiles(out, file_stem(experiment, config), config.name)


def index_file_name(experiment: str, version: str, plan: IndexPlan, nprobe: int, naming: str, preset: str) -> str:
    """RVC: ``added_IVF<n_list>_<layout>_<preset>_nprobe_<nprobe>_<exp>_<ver>.index``; Applio: ``<exp>.index``.

    The preset sits inside RVC's ``added_IVF…_nprobe_…`` shape, so builds of two presets into one folder
    keep two files, RVC's own ``added_…`` file is never overwritten, and RVC's lookup (any ``.index``
    whose path holds the model name and not "trained") still finds it."""
    if naming == "applio":
        return f"{experiment}{INDEX_SUFFIX}"
    return f"added_IVF{plan.n_list}_{plan.layout}_{preset}_nprobe_{nprobe}_{experiment}_{version}{INDEX_SUFFIX}"


@dataclass(frozen=True)
class OutputPlace:
    """Where one build writes: the experiment (named as ``--name`` says), its output folder, and the
    index file name when a caller fixed it (``--index-path``; None: decided by the build)."""

    experiment: Experiment
    out: Path
    index_file: str | None = None


def output_place(experiment: Experiment, out_dir: str | Path | None = None, index_path: str | Path | None = None,
                 name: str | None = None) -> OutputPlace:
    """The place of a build: ``index_path`` (a ``.index`` file) fixes the folder and the file name,
    ``out_dir`` the folder, else the experiment folder; ``name`` replaces the experiment's name."""
    if name is not None:
        if not name.strip() or any(c in name for c in "/\\\0") or name in (".", ".."):
            raise OutputError(f"--name {name!r}: not a plain name (no slashes)")
        experiment = dataclasses.replace(experiment, name=name)
    if out_dir is not None and not str(out_dir).strip():
        raise OutputError(f"--out {str(out_dir)!r}: an empty path; name the output folder (. for this one)")
    if index_path is not None:
        path = Path(index_path).expanduser().absolute()
        if path.is_dir():
            raise OutputError(f"--index-path {path}: is a folder; name the .index file to write")
        if out_dir is not None and path.parent != Path(out_dir).expanduser().absolute():
            raise OutputError(f"--index-path {path} and --out {out_dir}: give one of them")
        check_index_path(path)
        return OutputPlace(experiment, path.parent, path.name)
    out = Path(out_dir).expanduser().absolute() if out_dir is not None else experiment.exp_dir
    return OutputPlace(experiment, out)


def fixed_index_name(place: OutputPlace, config: Config) -> str | None:
    """The index file name when it is known before the build (``--index-path`` or Applio naming)."""
    if place.index_file is not None:
        return place.index_file
    if config.output.naming == "applio":
        return f"{file_stem(place.experiment.name, config)}{INDEX_SUFFIX}"
    return None


def report_owner(report: dict[str, Any]) -> tuple[object, object]:
    """(experiment, preset) a build report records (either may be missing from a foreign file)."""
    config = report.get("config")
    return report.get("experiment"), config.get("name") if isinstance(config, dict) else None


def check_files_are_ours(files: BuildFiles, experiment: str) -> None:
    """Refuse, before any work and whatever ``--force`` says, when the report at this build's file names is
    another build's: ``rvc-index-<exp>-<preset>`` reads the same for experiment ``alice`` with preset
    ``tips-plain`` and ``alice-tips`` with ``plain``, and this build would replace that one's files."""
    report = read_json(files.report)
    owner, preset = report_owner(report) if report is not None else (None, None)
    if not isinstance(owner, str) or (owner == experiment and preset in (files.preset, None)):
        return  # ours, or a file that names no experiment (the settings check says what to do with it)
    raise OutputError(f"{files.report}: the report of experiment {owner!r} (preset {preset}), not of this build "
                      f"(experiment {experiment!r}, preset {files.preset}): both builds' files are named "
                      f"rvc-index-{files.stem}-{files.preset}.*; give this one another --name or --out "
                      "(--force would replace the other build's index and report)")


def check_not_claimed(files: BuildFiles, index_name: str | None, force: bool) -> None:
    """Refuse, before any work, a fixed index name that another preset's or experiment's build in this
    folder wrote (its report names it): building would replace that build's index."""
    if index_name is None or force:
        return
    for report_file in sorted(files.out.glob("rvc-index-*.report.json")):
        report = read_json(report_file)
        if report_file == files.report or report is None or report.get("index_file") != index_name:
            continue
        owner, preset = report_owner(report)
        raise OutputError(f"{files.out / index_name}: written by another build here ({report_file.name}: "
                          f"experiment {owner!r}, preset {preset}); this build would replace it: give it its own "
                          "file with --index-path or --set output.naming=rvc, or replace it with --force")


def is_plain_name(name: object) -> bool:
    """A non-empty file name with no folder part (no separator, not ``.``/``..``)."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and "\0" not in name and Path(name).name == name)
