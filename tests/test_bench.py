"""The benchmark harness against RVC's recipe: OS-measured subprocesses, data, tables and docs."""

import json
import sys

import numpy as np

from benchmarks.bench_report import BEGIN, END, RVC, SECTION, readme_table, sweep_rows, update_docs
from benchmarks.bench_rvc import generate, run_bench, run_measured


def test_peak_rss_is_measured_by_the_os_per_subprocess(tmp_path):
    big = run_measured([sys.executable, "-c", "import numpy as np; a = np.ones(60_000_000); print(a.sum())"],
                       tmp_path / "big.log", timeout=120)
    small = run_measured([sys.executable, "-c", "print(1)"], tmp_path / "small.log", timeout=120)
    assert big["returncode"] == small["returncode"] == 0
    assert big["peak_rss_mb"] > 450 > 60 > small["peak_rss_mb"]  # 480 MB of float64 in the first only
    assert big["seconds"] > 0 and "60000000.0" in (tmp_path / "big.log").read_text()
    failed = run_measured([sys.executable, "-c", "import sys; sys.exit(3)"], tmp_path / "f.log", timeout=120)
    assert failed["returncode"] == 3
    killed = run_measured([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "k.log", timeout=1)
    assert killed["returncode"] != 0 and killed["seconds"] < 30


def test_generated_collection_has_exact_rows_and_unseen_utterances(tmp_path):
    collection = generate(tmp_path, 3000, 64, heldout_rows=500)
    indexed = [np.load(p) for p in sorted(collection.feature_dir.glob("*.npy"))]
    held = [np.load(p) for p in sorted(collection.heldout_dir.glob("*.npy"))]
    assert sum(len(a) for a in indexed) == 3000 and sum(len(a) for a in held) >= 500
    everything = np.concatenate(indexed)
    assert not any((np.abs(everything - frame).sum(axis=1) == 0).any() for frame in np.concatenate(held)[:50])
    stamp = next(collection.feature_dir.glob("*.npy")).stat().st_mtime_ns
    assert generate(tmp_path, 3000, 64, heldout_rows=500) == collection  # reused, not rewritten
    assert next(collection.feature_dir.glob("*.npy")).stat().st_mtime_ns == stamp


def test_update_docs_rewrites_only_the_generated_part(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\n## K-means\nkept\n\n{SECTION}\n\nmy notes\n\n{BEGIN}\nold\n{END}\n\nafter\n"
                   "\n## Later\nalso kept\n")
    run = {"rows": 1000, "dim": 64, "queries": 10, "command": "python -m benchmarks.bench_rvc --rows 1000",
           "date": "2026-01-01", "machine": {"cpus": 2, "memory_gib": 23.0, "load_average": 0.1, "faiss": "1.15.1"},
           "systems": [{"system": RVC, "returncode": 0, "seconds": 10.0, "peak_rss_mb": 300.0, "recall_at_k": 0.5,
                        "blend_error": 0.2, "us_per_frame": 40.0, "missing_label_share": 0.0, "vectors": 1000,
                        "n_list": 25, "nprobe": 1, "index_mb": 1.0}]}
    update_docs(doc, [run], "bench/end-to-end.png")
    text = doc.read_text()
    assert "## K-means\nkept" in text and "my notes" in text and "after" in text and "## Later\nalso kept" in text
    assert "old" not in text and "`python -m benchmarks.bench_rvc --rows 1000`" in text and "| rvc-recipe |" in text
    fresh = tmp_path / "new.md"
    update_docs(fresh, [run], None)
    assert fresh.read_text().startswith("# Benchmarks\n") and SECTION in fresh.read_text()


def test_bench_on_a_tiny_collection(tmp_path):
    figures, doc = tmp_path / "figs", tmp_path / "benchmarks.md"
    result = run_bench(3000, 64, ["rvc-classic", "tips"], work=tmp_path / "work", max_queries=200, heldout_rows=600,
                       figures=figures, docs=doc, command="python -m benchmarks.bench_rvc --rows 3000")
    systems = {s["system"]: s for s in result["systems"]}
    assert list(systems) == [RVC, "rvc-classic", "tips"]
    for s in systems.values():
        assert s["returncode"] == 0, open(s["log"]).read()[-2000:]
        assert s["seconds"] > 0 and s["peak_rss_mb"] > 50  # a python process with numpy and faiss
        assert 0.0 < s["recall_at_k"] <= 1.0 and s["blend_error"] >= 0.0 and s["us_per_frame"] > 0
        assert s["vectors"] == 3000 and s["queries"] == 200
    assert systems[RVC]["seconds_x_rvc"] == 1.0
    assert 0 < systems["tips"]["build_eval_share"] < 1 and systems["tips"]["build_eval_queries"] > 0  # ours evaluate
    assert systems["tips"]["seconds_x_rvc"] == round(systems["tips"]["seconds"] / systems[RVC]["seconds"], 3)
    assert systems["rvc-classic"]["missing_label_share"] == 0.0 and systems["tips"]["missing_label_share"] == 0.0
    saved = json.loads((figures / "end-to-end-3000x64.json").read_text())
    assert saved["systems"][0]["system"] == RVC and saved["machine"]["cpus"] >= 1
    assert (figures / "end-to-end.png").stat().st_size > 20_000
    text = doc.read_text()
    assert SECTION in text and "### 3,000 x 64" in text and "`python -m benchmarks.bench_rvc --rows 3000`" in text
    assert "| tips |" in text and "`tips`: " in text and "faster end to end than RVC's recipe" in text


def test_size_sweep_puts_rvc_and_ours_side_by_side(tmp_path):
    def run(rows, rvc_s, ours_s, share):
        def system(name, seconds, recall, blend, **more):
            return {"system": name, "returncode": 0, "seconds": seconds, "peak_rss_mb": 500.0, "recall_at_k": recall,
                    "blend_error": blend, "missing_label_share": 0.0, "us_per_frame": 40.0, "vectors": rows,
                    "n_list": 10, "nprobe": 1, "index_mb": 1.0, **more}
        return {"rows": rows, "dim": 768, "queries": 500, "command": "python -m benchmarks.bench_rvc --rows 6000,60000",
                "date": "2026-01-01", "harness": 2, "machine": {"cpus": 2, "memory_gib": 8.0, "load_average": 0.1,
                                                               "faiss": "1.15"},
                "systems": [system(RVC, rvc_s, 0.71, 0.19), system("tips-plain", ours_s, 1.0, 0.02,
                                                                    build_eval_share=share)]}

    runs = [run(60_000, 30.0, 6.0, 0.08), run(6_000, 6.0, 7.5, 0.09)]
    rows = sweep_rows(runs)
    assert [r["rows"] for r in rows] == ["6,000 x 768", "60,000 x 768"]  # by size
    assert rows[0]["target"] == ">= 1x missed" and rows[0]["RVC / ours"] == "0.80x"
    assert rows[1]["target"] == ">= 3x met" and rows[1]["our eval share"] == "8.0%"
    assert rows[1]["recall@8 RVC / ours"] == "0.710 / 1.000"
    table = readme_table(runs)
    assert table.count("\n") == 3 and "| 60,000 | 30.0 s | 6.0 s (5.0x faster) |" in table
    assert "| 6,000 | 6.0 s | 7.5 s (1.25x slower) |" in table
    doc = tmp_path / "b.md"
    update_docs(doc, runs, None)
    text = doc.read_text()
    assert "### Size sweep" in text and "| 6,000 x 768 | synthetic | 2026-01-01 | tips-plain |" in text


def test_replicated_collection_has_the_rows_asked_for_and_distinct_copies(tmp_path):
    from benchmarks.bench_passes import replicate_collection

    source = tmp_path / "src"
    source.mkdir()
    rng = np.random.default_rng(0)
    for i, frames in enumerate((70, 50, 30)):
        np.save(source / f"u{i}.npy", rng.standard_normal((frames, 16)).astype(np.float32))
    exp = replicate_collection(tmp_path / "data", source, 400, 16, 0)
    files = sorted((exp / "3_feature16").glob("*.npy"))
    arrays = [np.load(f) for f in files]
    assert sum(a.shape[0] for a in arrays) == 400 and len(files) == 8  # 2 whole copies, then 100 rows of a third
    first, second = np.load(exp / "3_feature16" / "c0_u0.npy"), np.load(exp / "3_feature16" / "c1_u0.npy")
    assert first.shape == second.shape and not np.allclose(first, second)
    assert json.loads((exp / ".complete").read_text())["replicated_from"] == str(source)
    assert replicate_collection(tmp_path / "data", source, 400, 16, 0) == exp  # written once


def test_issue_21_targets_per_preset_and_size():
    from benchmarks.bench_report import speed_target

    assert speed_target("tips-plain", 300_000) == speed_target("tips-plain", 1_000_000) == 4.0  # the budgeted default
    assert speed_target("realtime", 300_000) == 12.0 and speed_target("realtime", 1_000_000) == 16.0
    assert speed_target("tips-plain", 60_000) == 3.0 and speed_target("rvc-classic", 300_000) is None
