"""Pictures of an evaluation (``report.png`` beside every index) and of the benchmark against RVC.

Rendered with matplotlib's Agg canvas directly (no pyplot, no global backend switch; matplotlib is
imported only when a picture is drawn), from the typed evaluation; a report can be redrawn from report.json
(``runtime.records.from_json(BuildRecord, ...)``).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rvc_index.errors import RvcIndexError
from rvc_index.evaluation.result import Evaluation, Histogram, ListSizes
from rvc_index.inspection.describe import IndexDescription
from rvc_index.runtime.outputs import write_atomic

RECALL_TARGET = 0.95


class ReportError(RvcIndexError, RuntimeError):
    """matplotlib is missing, or the evaluation lacks what the picture shows."""


def figure_canvas(width: float, height: float, constrained: bool = True) -> Any:
    """An empty Agg figure; ``constrained`` layout places labels itself (slower to save)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # a base dependency: only a broken install gets here
        raise ReportError("matplotlib is needed to draw report.png: pip install matplotlib "
                          "(or --set evaluate.plot=false)") from exc
    figure = Figure(figsize=(width, height), dpi=110, layout="constrained" if constrained else None)
    FigureCanvasAgg(figure)
    return figure


def _bars(axis: Any, histogram: Histogram | ListSizes, color: str) -> None:
    edges, counts = list(histogram.edges), list(histogram.counts)
    widths = [b - a for a, b in zip(edges[:-1], edges[1:])]
    axis.bar(edges[:-1], counts, width=widths, align="edge", color=color, edgecolor="white", linewidth=0.4)


def _mb(value: float) -> str:
    return f"{value / 2**20:,.1f} MB"


def summary_lines(evaluation: Evaluation, index: IndexDescription | None = None) -> list[str]:
    """The key numbers of an evaluation, one per line (also the text panel of report.png)."""
    e, blend, latency, size = evaluation, evaluation.blend_error, evaluation.latency, evaluation.size
    lines = []
    if index:
        lines.append(f"{index.type}  d={index.d}  ntotal={index.ntotal:,}")
        if index.n_list is not None:
            lines.append(f"n_list {index.n_list}  nprobe {index.nprobe}"
                         + (f"  k_factor {index.k_factor:g}" if index.k_factor is not None else ""))
    lines += [
        f"recall@{e.k}: {e.recall_at_k:.3f}   queries with -1 labels: {e.missing_label_share:.1%}",
        f"blend error: mean {blend.mean:.4f}  median {blend.median:.4f}  p95 {blend.p95:.4f}" if blend
        else "blend error: not measured (no exact reference in this build's budget; evaluate.full=true)",
        f"coverage: {e.coverage:.3f}" + (f" (exact k-NN blend: {e.coverage_exact:.3f})"
                                         if e.coverage_exact is not None else ""),
        f"search: {latency.us_per_frame:.1f} us/frame = {latency.ms_per_second_audio:.2f} ms per "
        f"second of audio (1 thread, {latency.batch_frames}-frame batches)",
        f"size: RAM {_mb(size.ram_bytes)}" + (f", disk {_mb(size.disk_bytes)}" if size.disk_bytes is not None else "")
        + f", with RVC's big_npy {_mb(size.ram_with_big_npy_bytes)}",
        f"queries: {e.queries} frames of {e.holdout.files} held-out utterances ({e.holdout.source})",
    ]
    return lines


def _sweep_panel(curve: Any, evaluation: Evaluation, stored: int | None) -> None:
    sweep = evaluation.nprobe_sweep
    curve.set_title("recall@8 and latency against nprobe", fontsize=10)
    if not sweep:
        why = ("no IVF: no nprobe curve" if evaluation.list_sizes is None
               else "no nprobe sweep in this build's evaluation budget\n(evaluate.full=true, or rvc-index eval)")
        curve.axis("off")
        curve.text(0.5, 0.5, why, ha="center", va="center", fontsize=9)
        return
    nprobes = [point.nprobe for point in sweep]
    curve.plot(nprobes, [point.recall_at_k for point in sweep], "o-", color="tab:blue", label="recall@8")
    curve.axhline(RECALL_TARGET, color="tab:blue", linestyle=":", linewidth=1)
    curve.set_xscale("log", base=2)
    curve.set_xticks(nprobes, [str(n) for n in nprobes])
    curve.minorticks_off()
    curve.set_ylim(0, 1.02)
    curve.set_xlabel("nprobe")
    curve.set_ylabel("recall@8", color="tab:blue")
    speed = curve.twinx()
    speed.plot(nprobes, [point.us_per_frame for point in sweep], "s--", color="tab:red", label="us/frame")
    speed.set_ylabel("search us per frame (1 thread)", color="tab:red")
    speed.set_ylim(bottom=0)
    if stored:
        curve.axvline(stored, color="grey", linewidth=1)
        curve.annotate(f"stored nprobe {stored}", (stored, 0.04), fontsize=8, color="grey")


def _lists_panel(lists: Any, evaluation: Evaluation) -> None:
    sizes = evaluation.list_sizes
    if sizes is None:
        lists.text(0.5, 0.5, "no inverted lists", ha="center", va="center")
        return
    _bars(lists, sizes, "tab:green")
    lists.set_xlabel("vectors in an inverted list")
    lists.set_ylabel("lists")
    lists.set_title(f"inverted-list sizes ({sizes.n_list} lists, min {sizes.min}, max {sizes.max})", fontsize=10)


def _blend_panel(errors: Any, evaluation: Evaluation) -> None:
    errors.set_title("RVC blend error per held-out frame", fontsize=10)
    blend = evaluation.blend_error
    if blend is None:
        errors.axis("off")
        errors.text(0.5, 0.5, "not measured: no exact reference over the original\nframes in this build's "
                    "evaluation budget (evaluate.full=true)", ha="center", va="center", fontsize=9)
        return
    _bars(errors, blend.histogram, "tab:purple")
    for value, style, label in ((blend.mean, "-", "mean"), (blend.p95, ":", "p95")):
        errors.axvline(value, color="black", linestyle=style, linewidth=1, label=f"{label} {value:.4f}")
    errors.legend(fontsize=8)
    errors.set_xlabel("relative L2 error of RVC's blend vs exact k-NN over the original frames")
    errors.set_ylabel("query frames")


def _text_panel(text: Any, evaluation: Evaluation, index: IndexDescription | None, verdict: Sequence[str]) -> None:
    text.axis("off")
    if verdict:  # plain words first (rvc_index.evaluation.verdict)
        text.text(0.0, 1.0, "\n".join(textwrap.fill(line, 62, subsequent_indent="  ") for line in verdict),
                  va="top", ha="left", fontsize=8.5, fontweight="bold")
    text.text(0.0, 0.52 if verdict else 1.0, "\n".join(summary_lines(evaluation, index)), va="top", ha="left",
              fontsize=8.5 if not verdict else 7.5, family="monospace", wrap=True)


def render_report(evaluation: Evaluation, title: str, index: IndexDescription | None = None,
                  verdict: Sequence[str] = ()) -> Any:
    """A 2 x 2 figure: recall and latency against nprobe, list sizes, blend errors, key numbers (the
    ``verdict``'s lines first)."""
    if not isinstance(evaluation, Evaluation):
        raise ReportError(f"nothing to draw: {type(evaluation).__name__} is not a measured evaluation")
    figure = figure_canvas(11.0, 7.5, constrained=False)  # fixed margins: faster to save (docs/benchmarks.md)
    figure.subplots_adjust(left=0.07, right=0.93, bottom=0.08, top=0.9, wspace=0.3, hspace=0.38)
    figure.suptitle(title, fontsize=11)
    (curve, lists), (errors, text) = figure.subplots(2, 2)
    _sweep_panel(curve, evaluation, index.nprobe if index else None)
    _lists_panel(lists, evaluation)
    _blend_panel(errors, evaluation)
    _text_panel(text, evaluation, index, verdict)
    return figure


def write_report_png(path: Path, evaluation: Evaluation, title: str, index: IndexDescription | None = None,
                     verdict: Sequence[str] = ()) -> Path:
    """Render ``evaluation`` and write it to ``path`` atomically."""
    figure = render_report(evaluation, title, index, verdict)
    return write_atomic(Path(path), lambda tmp: figure.savefig(tmp, format="png", pil_kwargs={"compress_level": 1}))
