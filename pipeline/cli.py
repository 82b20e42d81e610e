"""``rvc-index`` command line: build | inspect | synth | demo."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.progress import configure_logging, get_logger

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
EXIT_FAILED = 1
EXIT_USAGE = 2


def resolve_config_path(value: str) -> Path:
    """A preset path, or a bare preset name (``tips``) looked up in ``configs/``."""
    path = Path(value)
    if path.exists() or path.suffix:
        return path
    return CONFIG_DIR / f"{value}.yaml"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Plain-text table of dicts sharing the same keys (None shown as '-')."""
    if not rows:
        return ""
    headers = list(rows[0])

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3f}" if value < 100 else f"{value:.0f}"
        return str(value)

    cells = [[cell(row.get(h)) for h in headers] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def _add_build_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default="tips", help="preset YAML or name in configs/ (default tips)")
    parser.add_argument("--backend", choices=["auto", "cpu", "gpu"], default="auto")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set index.nprobe=4 (repeatable)")
    parser.add_argument("--force", action="store_true", help="rebuild even if an up-to-date index exists")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rvc-index", description=__doc__)
    parser.add_argument("--version", action="version", version=f"rvc-index {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("-q", "--quiet", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="build the index of one experiment")
    build.add_argument("path", help="logs/<exp>, logs/<exp>/3_feature768 or any folder of .npy files")
    build.add_argument("--out", help="output folder (default: the experiment folder, as RVC)")
    _add_build_options(build)

    inspect = commands.add_parser("inspect", help="describe an index file")
    inspect.add_argument("index")

    synth = commands.add_parser("synth", help="write a synthetic multi-speaker collection")
    synth.add_argument("root", help="output root (RVC's logs/ layout)")
    synth.add_argument("--speakers", type=int, default=4)
    synth.add_argument("--rows", type=int, default=20000, help="rows per speaker")
    synth.add_argument("--dim", type=int, default=768)
    synth.add_argument("--seed", type=int, default=0)

    demo = commands.add_parser("demo", help="generate data, build one index per speaker, print a table")
    demo.add_argument("--root", default="demo-data", help="where to write the synthetic logs/ (default demo-data)")
    _add_build_options(demo)
    return parser


def cmd_build(args: argparse.Namespace) -> int:
    from pipeline.backend import select_backend
    from pipeline.config import load_config
    from pipeline.runner import build_experiment

    config = load_config(resolve_config_path(args.config), args.overrides)
    result = build_experiment(args.path, config, args.out, select_backend(args.backend), force=args.force)
    print(format_table([result.summary()]))
    print(f"index: {result.index_path}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    import faiss

    from pipeline.indexing import describe_index

    path = Path(args.index)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such index file")
    info = describe_index(faiss.read_index(str(path)))
    print(json.dumps(info, indent=2))
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from pipeline.synth import SpeakerSpec, generate_collection

    specs = [SpeakerSpec(f"speaker{i:02d}", args.rows, args.dim) for i in range(args.speakers)]
    for folder in generate_collection(Path(args.root), specs, args.seed):
        print(folder)
    return 0


DEMO_SPEAKERS = (("alto", 12_000, 768), ("bass", 30_000, 768), ("tenor", 60_000, 768), ("v1voice", 20_000, 256))


def cmd_demo(args: argparse.Namespace) -> int:
    from distributed import Client, LocalCluster

    from pipeline.backend import select_backend
    from pipeline.config import load_config
    from pipeline.runner import build_experiment
    from pipeline.synth import SpeakerSpec, write_speaker

    config = load_config(resolve_config_path(args.config), args.overrides)
    root = Path(args.root)
    backend = select_backend(args.backend)
    rows = []
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, Client(cluster) as client:
        for name, n_rows, dim in DEMO_SPEAKERS:
            if not (root / name).is_dir():
                write_speaker(root, SpeakerSpec(name, n_rows, dim))
            result = build_experiment(root / name, config, backend=backend, client=client, force=args.force)
            rows.append(result.summary())
    print()
    print(format_table(rows))
    return 0


COMMANDS = {"build": cmd_build, "inspect": cmd_inspect, "synth": cmd_synth, "demo": cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    configure_logging(-1 if args.quiet else args.verbose)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        get_logger().error("interrupted")
        return 130
    except (ValueError, OSError, RuntimeError) as exc:
        get_logger().error("%s", exc)
        if args.verbose:
            raise
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
