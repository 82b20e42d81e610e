"""report.png: drawn from a real evaluation, written atomically beside every build, before report.json."""

import json
from dataclasses import asdict

import faiss
import numpy as np
import pytest
from matplotlib.image import imread
from rvc_index.compute.backend import select_backend
from rvc_index.config.loading import load_config
from rvc_index.evaluation.evaluate import evaluate_index
from rvc_index.evaluation.holdout import Holdout
from rvc_index.evaluation.plots import ReportError, render_report, summary_lines, write_report_png
from rvc_index.evaluation.result import Evaluation, EvaluationSkipped
from rvc_index.evaluation.sizing import full_plan
from rvc_index.inspection.describe import describe_index
from rvc_index.job.runner import build_experiment
from rvc_index.runtime.records import from_json
from rvc_index.runtime.run import Run
from rvc_index.tools.synth import utterances

from benchmarks.bench_report import write_bench_png

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def evaluation():
    data = np.concatenate(list(utterances(4000, 64, [0, 64])))
    index = faiss.index_factory(64, "IVF64,Flat")
    index.train(data)
    index.add(data)
    faiss.extract_index_ivf(index).nprobe = 2
    holdout = Holdout(data[:300], ((0, 600),), ("a",), len(data))
    result = evaluate_index(index, holdout, data, Run(select_backend("cpu")), exclude_ids=np.arange(600),
                            stored_is_original=True, plan=full_plan(300, repeats=1))
    return result, describe_index(index)


def drawn_colours(path):
    pixels = (imread(str(path))[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    return pixels, {tuple(p) for p in np.unique(pixels // 16, axis=0)}


def test_report_png_is_written_and_shows_the_plots(evaluation, tmp_path):
    result, index = evaluation
    path = write_report_png(tmp_path / "r.png", result, "test index", index)
    assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 30_000
    pixels, colours = drawn_colours(path)
    assert pixels.shape[0] > 800 * 600  # a full-size figure, not a stub
    assert (pixels.std(axis=0) > 20).all() and len(colours) > 30
    # the histogram bars: matplotlib's tab:green (lists) and tab:purple (blend errors) are drawn
    for rgb in ((44, 160, 44), (148, 103, 189), (31, 119, 180), (214, 39, 40)):
        assert (np.abs(pixels.astype(int) - rgb).sum(axis=1) < 30).sum() > 200, rgb
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_summary_lines_carry_the_key_numbers(evaluation):
    result, index = evaluation
    text = "\n".join(summary_lines(result, index))
    assert f"recall@8: {result.recall_at_k:.3f}" in text
    assert f"{result.latency.us_per_frame:.1f} us/frame" in text and "n_list 64  nprobe 2" in text


def test_a_report_redraws_from_report_json(evaluation, tmp_path):
    """report.json holds the typed evaluation: read back, it draws the same picture's numbers."""
    result, index = evaluation
    back = from_json(Evaluation, json.loads(json.dumps(asdict(result))))
    assert back == result and summary_lines(back, index) == summary_lines(result, index)
    assert write_report_png(tmp_path / "again.png", back, "again", index, ("verdict: good",)).stat().st_size > 30_000


def test_report_needs_an_evaluation(evaluation):
    with pytest.raises(ReportError, match="EvaluationSkipped is not a measured evaluation"):
        render_report(EvaluationSkipped("one file"), "x")


def test_every_build_writes_report_png_before_report_json(make_experiment, tmp_path):
    exp = make_experiment("pic", 5000, 64) / "3_feature64"
    config = load_config("configs/rvc-classic.yaml", ["evaluate.recall_queries=300", "evaluate.holdout_fraction=0.1",
                                                      "evaluate.full=true"])
    result = build_experiment(exp, config, tmp_path / "out")
    png = result.report_path.with_name(result.report_path.name.replace(".report.json", ".report.png"))
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 30_000
    assert png.stat().st_mtime_ns <= result.report_path.stat().st_mtime_ns  # the JSON is the done marker
    report = json.loads(result.report_path.read_text())
    evaluation = report["evaluation"]
    for key in ("recall_at_k", "blend_error", "coverage", "latency", "size", "missing_label_share",
                "nprobe_sweep", "list_sizes", "holdout"):
        assert key in evaluation, key
    assert evaluation["missing_label_share"] == 0.0 and evaluation["holdout"]["left_out_of_index"]
    assert evaluation["size"]["disk_bytes"] == report["index_bytes"]
    assert report["timings"]["evaluate"] > 0 and "report" in report["timings"]
    # no plot asked for: a previous picture, which would describe another index, goes away
    quiet = load_config("configs/rvc-classic.yaml", ["evaluate.plot=false", "index.nprobe=2"])
    build_experiment(exp, quiet, tmp_path / "out", force=True)
    assert not png.exists()


def test_a_single_file_experiment_skips_evaluation_without_failing(tmp_path):
    folder = tmp_path / "logs" / "solo" / "3_feature256"
    folder.mkdir(parents=True)
    np.save(folder / "only.npy", np.concatenate(list(utterances(2000, 256, [2, 256]))))
    result = build_experiment(folder, load_config("configs/rvc-classic.yaml"), tmp_path / "o")
    assert "2 or more" in result.record.evaluation.skipped
    assert not (tmp_path / "o" / "rvc-index-solo-rvc-classic.report.png").exists()


def test_bench_png_from_results(tmp_path):
    def system(name, seconds, rss, recall, blend):
        return {"system": name, "seconds": seconds, "peak_rss_mb": rss, "recall_at_k": recall, "blend_error": blend}

    runs = [{"rows": n, "dim": 768, "systems": [system("rvc-recipe", n / 1000, 3 * n / 1000, 0.5, 0.2),
                                                 system("tips", n / 10000, n / 2000, 0.96, 0.05)]}
            for n in (100_000, 300_000)]
    path = write_bench_png(tmp_path / "bench.png", runs)
    assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 20_000
