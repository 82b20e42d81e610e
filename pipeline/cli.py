"""``rvc-index`` command line: build | batch | inspect | eval | tune | synth | demo | unretire | status."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rvc_index import __version__
from rvc_index.api import BACKENDS
from rvc_index.config.loading import DEFAULT_PRESET
from rvc_index.errors import RvcIndexError
from rvc_index.runtime.memory import avoid_compaction_stalls, keep_freed_memory
from rvc_index.runtime.outputs import check_output_file, check_output_folder, check_working_folder
from rvc_index.runtime.progress import DETAIL, configure_logging, get_logger, tolerate_console_encoding
from rvc_index.runtime.tables import format_table

EXIT_FAILED = 1
NEEDS_FAISS = ("build", "batch", "inspect", "eval", "tune", "demo")


class FaissMissing(RvcIndexError, ImportError):
    """faiss is not installed (a plain ``pip install rvc-index`` has no faiss: it comes with an extra)."""


def require_faiss() -> None:
    """Raise FaissMissing, in one line naming the extra, when faiss cannot be imported."""
    try:
        import faiss  # noqa: F401
    except ImportError as exc:
        if "rvc-index[" in str(exc):  # rvc_index.runtime.faiss_guard already named the fix
            raise FaissMissing(f"faiss cannot be imported: {exc}") from None
        raise FaissMissing(f'faiss cannot be imported ({exc}): pip install "rvc-index[cpu]" (or [gpu])') from None


def _add_build_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=DEFAULT_PRESET, help=f"preset (default {DEFAULT_PRESET})")
    parser.add_argument("--backend", choices=BACKENDS, default="auto")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set index.nprobe=4 (repeatable)")
    parser.add_argument("--force", action="store_true", help="rebuild even if an up-to-date index exists")
    parser.add_argument("--lock", choices=["wait", "refuse", "none"], help="= --set safety.lock=...")
    parser.add_argument("--retire-old", action="store_true", help="rename other .index files RVC or Applio could "
                        "pick to *.index.retired (undo: rvc-index unretire FOLDER)")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rvc-index", description=__doc__)
    parser.add_argument("--version", action="version", version=f"rvc-index {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="-v: every stage and progress line; -vv: debug lines and tracebacks")
    parser.add_argument("-q", "--quiet", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="build the index of one experiment")
    build.add_argument("path", help="logs/<exp>, logs/<exp>/3_feature768 or any folder of .npy files")
    build.add_argument("--out", help="output folder (default: the experiment folder, as RVC)")
    build.add_argument("--name", help="the model's name in file names (default: the experiment folder's name)")
    build.add_argument("--index-path", metavar="FILE",
                       help="write the index to exactly this .index file (its folder takes the report)")
    _add_build_options(build)

    unretire = commands.add_parser("unretire", help="give retired indexes (*.index.retired) their names back")
    unretire.add_argument("folder", help="the folder a build retired them in (logs/<exp>)")

    inspect = commands.add_parser("inspect", help="describe an index file")
    inspect.add_argument("index")

    synth = commands.add_parser("synth", help="write a synthetic multi-speaker collection")
    synth.add_argument("root", help="output root (RVC's logs/ layout)")
    synth.add_argument("--speakers", type=int, default=4)
    synth.add_argument("--rows", type=int, default=20000, help="rows per speaker")
    synth.add_argument("--dim", type=int, default=768)
    synth.add_argument("--seed", type=int, default=0)

    batch = commands.add_parser("batch", help="build every experiment under a logs/ root on a Dask cluster")
    batch.add_argument("root", help="RVC's or Applio's logs/ folder: every <exp>/3_feature256|3_feature768 and "
                       "<model>/extracted is built")
    batch.add_argument("--out", help="write to OUT/<exp>/ (default: each experiment folder, as RVC)")
    batch.add_argument("--cluster", default="local",
                       help="local (default), cuda, slurm, a scheduler address or a scheduler file")
    batch.add_argument("--workers", type=int, help="local: worker processes (default: one per core); "
                       "cuda: GPUs; slurm: worker jobs; address/file: workers to wait for")
    batch.add_argument("--only", action="append", default=[], metavar="PATTERN",
                       help="only experiments whose name matches this glob (repeatable, comma-separated)")
    batch.add_argument("--shard", help="K/N: build shard K of N (balanced by size); 'slurm': this array task's")
    batch.add_argument("--report", help="where to write the JSON report (default: batch_report.json in OUT or ROOT)")
    batch.add_argument("--performance-report", metavar="FILE", help="write Dask's HTML performance report")
    batch.add_argument("--dry-run", action="store_true",
                       help="read every header; print what would be built, skipped (up to date) or fail, and exit "
                       "(1 if any would fail)")
    batch.add_argument("--retries", type=int, default=0, metavar="N",
                       help="try a build that failed for a reason other than its input (a lost worker, out of "
                       "memory) up to N more times (default 0)")
    _add_build_options(batch)

    status = commands.add_parser("status", help="merge the shard reports of a batch array job (jobs/submit.sh), "
                                 "while it runs or after it ended")
    status.add_argument("folder", help="where the array writes batch_report.shard-K-of-N.json: ROOT, or its --out")
    status.add_argument("--job", help="the SLURM array job id (default: the newest shard report's)")
    status.add_argument("--final", action="store_true",
                        help="the array has ended: what no task finished counts as failed; write batch_report.json "
                        "(exit 1 if any failed, 75 if stopped)")

    evaluate = commands.add_parser("eval", help="measure an index on held-out utterances of its speaker")
    evaluate.add_argument("index", help="the .index file")
    evaluate.add_argument("feature_dir", help="the speaker's features: logs/<exp>, its 3_feature folder or .npy files")
    evaluate.add_argument("--holdout", type=float, default=0.05, metavar="FRACTION",
                          help="share of the rows held out, as whole utterances, to query with (default 0.05)")
    evaluate.add_argument("--queries", metavar="DIR", help="query with these never-indexed utterances instead")
    evaluate.add_argument("--max-queries", type=int, default=1000, help="query frames (default 1000)")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--backend", choices=BACKENDS, default="auto")
    evaluate.add_argument("--no-sweep", action="store_true", help="skip recall/latency against nprobe")
    evaluate.add_argument("--json", metavar="FILE", help="write every measure as JSON")
    evaluate.add_argument("--png", metavar="FILE", help="draw the report picture")

    tune = commands.add_parser("tune", help="measure index layouts and search settings on held-out "
                               "utterances; write the cheapest config meeting a target")
    tune.add_argument("path", help="logs/<exp>, its 3_feature folder or any folder of .npy files")
    tune.add_argument("--out", default="tuned.yaml", help="the preset to write (default tuned.yaml)")
    tune.add_argument("--name", default="tuned", help="the preset's name (default tuned)")
    tune.add_argument("--min-recall", type=float, default=0.95, help="recall@8 target (default 0.95)")
    tune.add_argument("--max-us-per-frame", type=float, default=0.0, help="single-thread search limit; 0 = none")
    tune.add_argument("--max-ram-mb", type=float, default=0.0, help="index RAM budget in MB; 0 = none")
    tune.add_argument("--objective", choices=["latency", "memory"], default="latency",
                      help="among configs meeting the target, the fastest (default) or the smallest")
    tune.add_argument("--holdout", type=float, default=0.05, metavar="FRACTION")
    tune.add_argument("--max-queries", type=int, default=1000)
    tune.add_argument("--quick", action="store_true", help="fewer layouts (flat and fp16 lists, two n_list sizes)")
    tune.add_argument("--config", "-c", default=DEFAULT_PRESET,
                      help=f"base preset (default {DEFAULT_PRESET}: no expansion, so the blend stays closest to exact)")
    tune.add_argument("--backend", choices=BACKENDS, default="auto")
    tune.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    demo = commands.add_parser("demo", help="generate data, build one index per speaker, print a table")
    demo.add_argument("--root", default="demo-data", help="where to write the synthetic logs/ (default demo-data)")
    _add_build_options(demo)
    return parser


def command_seconds() -> float:
    """Seconds since this process started (interpreter start and imports included)."""
    import psutil

    return max(0.0, time.time() - psutil.Process().create_time())


def cmd_build(args: argparse.Namespace) -> int:
    from rvc_index.api import build_index

    result = build_index(args.path, args.out, preset=args.config, overrides=build_overrides(args), name=args.name,
                         index_path=args.index_path, backend=args.backend, force=args.force,
                         head_start_s=command_seconds())
    print(format_table([result.summary()]))
    print(f"index: {result.index_path}")
    return 0


def build_overrides(args: argparse.Namespace) -> list[str]:
    lock, retire_old = getattr(args, "lock", None), getattr(args, "retire_old", False)
    return [*args.overrides, *([f"safety.lock={lock}"] if lock else []), *(["output.retire_old=true"] * retire_old)]


def cmd_unretire(args: argparse.Namespace) -> int:
    from rvc_index.job.retire import unretire

    folder = Path(args.folder).absolute()
    restored = unretire(folder)
    print("\n".join([*(f"{a.relative_to(folder)} -> {b.name}" for a, b in restored),
                     f"{len(restored)} restored in {args.folder}"]))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from rvc_index.evaluation.index_file import inspect_index_file

    path = Path(args.index)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such index file")
    print(json.dumps(dataclasses.asdict(inspect_index_file(path)), indent=2))
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from rvc_index.tools.synth import generate_collection, speaker_specs

    specs = speaker_specs(args.speakers, args.rows, args.dim)
    root = check_output_folder("ROOT", args.root)
    for folder in generate_collection(root, specs, args.seed):
        print(folder)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from rvc_index.api import build_batch
    from rvc_index.tools.synth import write_demo

    root = write_demo(Path(args.root))
    report = build_batch(root, preset=args.config, overrides=build_overrides(args), workers=2, backend=args.backend,
                         force=args.force)
    print()
    print(report.table())
    return report.exit_code


def cmd_batch(args: argparse.Namespace) -> int:
    from rvc_index.api import build_batch, preview_batch

    common = dict(preset=args.config, overrides=build_overrides(args), only=args.only, shard=args.shard,
                  backend=args.backend)
    if args.dry_run:
        from rvc_index.batch.preview import format_previews

        previews = preview_batch(args.root, args.out, **common)
        print(format_previews(previews))
        return EXIT_FAILED if any(p.action == "fail" for p in previews) else 0
    report = build_batch(args.root, args.out, **common, cluster=args.cluster, workers=args.workers,
                         force=args.force, report=args.report, retries=args.retries,
                         performance_report=args.performance_report, verbose=args.verbose > 0)
    if not report.records:
        print(f"shard {args.shard}: no experiments")
        return 0
    print(report.table())
    print(report.headline())
    print(f"report: {report.meta['report_file']}")
    return report.exit_code


def cmd_status(args: argparse.Namespace) -> int:
    from rvc_index.batch.status import merge_shards, write_final

    report, notes = merge_shards(args.folder, args.job, args.final)
    print(report.table())
    for note in notes:
        print(note)
    print(report.headline())
    if args.final:
        print(f"report: {write_final(args.folder, report)}")
        return report.exit_code
    return EXIT_FAILED if report.counts()["failed"] else 0


def cmd_eval(args: argparse.Namespace) -> int:
    from rvc_index.api import evaluate_index
    from rvc_index.evaluation.plots import summary_lines, write_report_png
    from rvc_index.runtime.outputs import write_json_atomic

    given = {"--json": args.json, "--png": args.png}
    outputs = {option: check_output_file(option, value) for option, value in given.items() if value is not None}
    result = evaluate_index(args.index, args.feature_dir, holdout=args.holdout, queries=args.queries,
                            max_queries=args.max_queries, seed=args.seed, backend=args.backend,
                            sweep=not args.no_sweep)
    print("\n".join(summary_lines(result, result.index)))
    print(f"held out: {result.holdout.note}")
    if result.nprobe_sweep:
        print(format_table([dataclasses.asdict(point) for point in result.nprobe_sweep]))
    if "--json" in outputs:
        write_json_atomic(outputs["--json"], dataclasses.asdict(result))
    if "--png" in outputs:
        write_report_png(outputs["--png"], result, Path(args.index).name, result.index)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from rvc_index.api import tune_index

    result = tune_index(args.path, args.out, preset=args.config, overrides=args.overrides, min_recall=args.min_recall,
                        max_us_per_frame=args.max_us_per_frame, max_ram_mb=args.max_ram_mb, objective=args.objective,
                        holdout=args.holdout, max_queries=args.max_queries, quick=args.quick, name=args.name,
                        backend=args.backend)
    print(format_table([dataclasses.asdict(t) | {"meets": t.meets(result.target)} for t in result.per_layout]))
    chosen = result.chosen
    print(f"chosen: {chosen.lists} lists, n_list {chosen.n_list}, nprobe {chosen.nprobe}: recall@8 "
          f"{chosen.recall_at_k:.3f}, blend error {chosen.blend_error:.4f}, {chosen.us_per_frame:.1f} us/frame, "
          f"{chosen.ram_mb:.1f} MB")
    print(f"config: {result.preset_file}  (rvc-index build {args.path} --config {result.preset_file})")
    return 0


COMMANDS = {"build": cmd_build, "inspect": cmd_inspect, "synth": cmd_synth, "demo": cmd_demo, "batch": cmd_batch,
            "eval": cmd_eval, "tune": cmd_tune, "unretire": cmd_unretire, "status": cmd_status}


def main(argv: Sequence[str] | None = None) -> int:
    memory = [avoid_compaction_stalls(), keep_freed_memory()]  # before anything imports numpy
    args = make_parser().parse_args(argv)
    tolerate_console_encoding()
    configure_logging(-1 if args.quiet else args.verbose)
    for note in filter(None, memory):
        get_logger().info("%s", note, extra=DETAIL)
    try:
        check_working_folder()
        if args.command in NEEDS_FAISS:
            require_faiss()
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        get_logger().error("interrupted")
        return 130
    except (RvcIndexError, OSError) as exc:  # a user's input, config or environment (disk, permissions)
        get_logger().error("%s", exc)
        if args.verbose > 1:
            raise
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
