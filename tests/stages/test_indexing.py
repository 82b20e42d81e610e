import math

import faiss
import numpy as np
import pytest
from rvc_index.compute.backend import select_backend
from rvc_index.config.schema import LIST_FORMATS, BudgetConfig, IndexConfig
from rvc_index.inspection.consumers import gpu_clone_problem, static_problems
from rvc_index.inspection.describe import TooFewRowsError, describe_index, list_sizes
from rvc_index.job.naming import index_file_name
from rvc_index.runtime.progress import Progress
from rvc_index.stages.indexing import (
    IndexBuildError,
    add_batches,
    assemble_index,
    check_consumers,
    nprobe_for_k,
    plan_index,
    rule_n_list,
    save_index,
    search_us,
    set_search_params,
    train_coarse,
)
from rvc_index.tools.synth import sample_frames


@pytest.mark.parametrize("n_rows", [8, 39, 77, 78, 100, 1000, 5000, 100_000, 102_882, 200_000])
def test_rule_n_list_is_rvcs_formula(n_rows):
    rvc = max(1, min(int(16 * np.sqrt(n_rows)), n_rows // 39))
    assert rule_n_list(n_rows, 16.0, 39) == rvc


def test_rvcs_100k_decision():
    assert rule_n_list(102_882, 16, 39) == 2638
    assert rule_n_list(10_000, 16, 39) == 256


def test_plan_lowers_what_the_data_cannot_support():
    with pytest.raises(TooFewRowsError, match="at least 8 rows"):
        plan_index(7, 768, IndexConfig())
    tiny = plan_index(50, 768, IndexConfig(lists="sq8"))
    assert tiny.lists == "flat" and tiny.n_list == 1 and any("min_coded_rows" in n for n in tiny.notes)
    forced = plan_index(1000, 768, IndexConfig(n_list=500))
    assert forced.n_list == 1000 // 39 and "lowered" in forced.notes[0]
    assert plan_index(5000, 768, IndexConfig(nprobe=64)).nprobe <= rule_n_list(5000, 16, 39)
    with pytest.raises(IndexBuildError, match="pq_m=100 must divide"):
        plan_index(50_000, 768, IndexConfig(lists="pq8", pq_m=100))
    pq = plan_index(50_000, 256, IndexConfig(lists="pq8", sqrt_factor=2.0))
    assert pq.pq_m == 16 and pq.factory == f"IVF{int(2 * math.sqrt(50_000))},PQ16" and pq.code_bytes == 16
    few = plan_index(200, 768, IndexConfig(lists="pq8", min_coded_rows=0))
    assert few.lists == "flat" and any("8-bit PQ" in n for n in few.notes)
    for lists, factory in (("flat", "Flat"), ("fp16", "SQfp16"), ("sq8", "SQ8")):
        assert plan_index(50_000, 768, IndexConfig(lists=lists, n_list=100)).factory == f"IVF100,{factory}"


def test_auto_lists_take_the_lowest_blend_error_that_searches_within_budget():
    config = IndexConfig(lists="auto", sqrt_factor=1.0, nprobe=5)
    small = plan_index(20_000, 768, config)
    assert small.lists == "flat" and small.us_per_frame <= BudgetConfig().us_per_frame
    costs = {lists: search_us(lists, 768, 175_000, 418, 5, 48) for lists in LIST_FORMATS}
    assert costs["flat"] > costs["fp16"] > costs["pq8"]  # fewer bytes per vector scanned: faster
    budget = BudgetConfig(us_per_frame=(costs["flat"] + costs["fp16"]) / 2)  # flat over it, fp16 within
    chosen = plan_index(175_000, 768, config, budget)
    assert chosen.lists == "fp16" and chosen.us_per_frame <= budget.us_per_frame
    assert any("over budget.us_per_frame" in n for n in chosen.notes)
    nothing_fits = plan_index(175_000, 768, config, BudgetConfig(us_per_frame=1.0))
    assert nothing_fits.lists == min(LIST_FORMATS, key=lambda lists: search_us(lists, 768, 175_000, 418, 5, 48))
    assert plan_index(175_000, 768, IndexConfig(lists="flat"), BudgetConfig(us_per_frame=1.0)).lists == "flat"


def test_nprobe_for_k_guarantees_k_from_the_smallest_lists():
    sizes = np.array([0, 1, 2, 50, 3, 7])
    assert nprobe_for_k(sizes, 8, 1) == 5  # 0+1+2+3+7 >= 8
    assert nprobe_for_k(sizes, 8, 6) == 6
    assert nprobe_for_k(np.array([8, 9, 10]), 8, 1) == 1
    with pytest.raises(IndexBuildError, match="cannot be served"):
        nprobe_for_k(np.array([3, 4]), 8, 1)


@pytest.mark.parametrize("lists", LIST_FORMATS)
def test_every_list_format_builds_an_ivf_every_consumer_loads(lists, tmp_path):
    x = sample_frames(12_000, 256, seed=3)
    config = IndexConfig(lists=lists, sqrt_factor=4.0, nprobe=4, min_coded_rows=0)
    plan = plan_index(x.shape[0], 256, config)
    assert plan.lists == lists
    backend = select_backend("cpu")
    centroids = train_coarse(x[:8000], plan.n_list, backend, 10, seed=0)
    index = assemble_index(plan, centroids, x[:10_000])
    add_batches(index, (x[i:i + 1000] for i in range(0, len(x), 1000)), backend, Progress("add", len(x)))
    assert index.ntotal == len(x)
    stored = index.reconstruct_n(0, index.ntotal)
    error = np.linalg.norm(stored - x, axis=1) / np.linalg.norm(x, axis=1)  # what reconstruct_n loses, per row
    assert np.median(error) <= {"flat": 0.0, "fp16": 2e-4, "sq8": 0.01, "pq8": 0.35}[lists]
    assert error.max() <= {"flat": 0.0, "fp16": 1e-3, "sq8": 0.1, "pq8": 0.8}[lists]
    nprobe = nprobe_for_k(list_sizes(index), 8, plan.nprobe)
    set_search_params(index, nprobe)
    check_consumers(index, 256)
    assert static_problems(index, 256) == {} and gpu_clone_problem(index) is None
    path = tmp_path / index_file_name("spk", "v1", plan, nprobe, "rvc", "preset")
    save_index(index, path)
    assert f"_{plan.layout}_preset_" in path.name
    loaded = faiss.read_index(str(path))
    info = describe_index(loaded)
    assert info.nprobe == nprobe and info.ntotal == len(x) and info.d == 256
    assert isinstance(faiss.downcast_index(loaded), faiss.IndexIVF)
    loaded.nprobe = 12  # what Applio realtime does: a top-level IVF has the attribute
    _, labels = loaded.search(x[:200] + 0.01, 8)
    assert (labels >= 0).all()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_layout_a_consumer_cannot_use_is_refused_before_writing():
    x = sample_frames(3000, 64, seed=4)
    refine = faiss.index_factory(64, "IVF16,PQ32x4fs,RFlat")
    refine.train(x)
    refine.add(x)
    with pytest.raises(IndexBuildError, match="applio-realtime.*no nprobe.*deiteris.*not implemented on GPU"):
        check_consumers(refine, 64)
    flat = faiss.IndexFlatL2(64)
    flat.add(x)
    with pytest.raises(IndexBuildError, match="applio-realtime"):
        check_consumers(flat, 64)
    four_bit = faiss.index_factory(64, "IVF16,PQ16x4")
    four_bit.train(x)
    four_bit.add(x)
    assert "8-bit codes" in gpu_clone_problem(four_bit)
    with pytest.raises(IndexBuildError, match="128-dimensional, the voice's features are 64"):
        check_consumers(faiss.IndexIVFFlat(faiss.IndexFlatL2(128), 128, 4), 64)
