import math

import faiss
import numpy as np
import pytest
from rvc_index.build.naming import index_file_name
from rvc_index.compute.backend import select_backend
from rvc_index.config.schema import IndexConfig
from rvc_index.runtime.progress import Progress
from rvc_index.stages.indexing import (
    IVF_FLAT,
    IVF_PQ_RFLAT,
    IndexBuildError,
    add_batches,
    assemble_index,
    describe_index,
    list_sizes,
    nprobe_for_k,
    plan_index,
    rule_n_list,
    set_search_params,
    train_coarse,
    write_index,
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
    with pytest.raises(IndexBuildError, match="at least 8 rows"):
        plan_index(7, 768, IndexConfig())
    tiny = plan_index(50, 768, IndexConfig(recipe=IVF_PQ_RFLAT))
    assert tiny.recipe == IVF_FLAT and tiny.n_list == 1 and tiny.notes
    forced = plan_index(1000, 768, IndexConfig(n_list=500))
    assert forced.n_list == 1000 // 39 and "lowered" in forced.notes[0]
    assert plan_index(5000, 768, IndexConfig(nprobe=64)).nprobe <= rule_n_list(5000, 16, 39)
    with pytest.raises(IndexBuildError, match="pq_m=100 must divide"):
        plan_index(5000, 768, IndexConfig(recipe=IVF_PQ_RFLAT, pq_m=100))
    pq = plan_index(50_000, 256, IndexConfig(recipe=IVF_PQ_RFLAT, sqrt_factor=2.0))
    assert pq.pq_m == 128 and pq.factory == f"IVF{int(2 * math.sqrt(50_000))},PQ128x4fs,RFlat"


def test_nprobe_for_k_guarantees_k_from_the_smallest_lists():
    sizes = np.array([0, 1, 2, 50, 3, 7])
    assert nprobe_for_k(sizes, 8, 1) == 5  # 0+1+2+3+7 >= 8
    assert nprobe_for_k(sizes, 8, 6) == 6
    assert nprobe_for_k(np.array([8, 9, 10]), 8, 1) == 1
    with pytest.raises(IndexBuildError, match="cannot be served"):
        nprobe_for_k(np.array([3, 4]), 8, 1)


@pytest.mark.parametrize("recipe", [IVF_FLAT, IVF_PQ_RFLAT])
def test_built_index_reconstructs_exactly_and_fills_k(recipe, tmp_path):
    x = sample_frames(6000, 256, seed=3)
    config = IndexConfig(recipe=recipe, sqrt_factor=4.0, nprobe=4, k_factor=4)
    plan = plan_index(x.shape[0], 256, config)
    backend = select_backend("cpu")
    centroids = train_coarse(x[:4000], plan.n_list, backend, 10, seed=0)
    index = assemble_index(plan, centroids, x[:4000])
    add_batches(index, (x[i:i + 1000] for i in range(0, len(x), 1000)), backend, Progress("add", len(x)))
    assert index.ntotal == len(x)
    np.testing.assert_array_equal(index.reconstruct_n(0, index.ntotal), x)
    nprobe = nprobe_for_k(list_sizes(index), 8, plan.nprobe)
    set_search_params(index, nprobe, plan.k_factor)
    path = tmp_path / index_file_name("spk", "v1", plan, nprobe, "rvc", "preset")
    write_index(index, path)
    loaded = faiss.read_index(str(path))
    info = describe_index(loaded)
    assert info["nprobe"] == nprobe and info["ntotal"] == len(x) and info["d"] == 256
    assert info["list_size_min"] + info["list_size_max"] > 0
    if recipe == IVF_PQ_RFLAT:
        assert info["type"] == "IndexRefineFlat" and info["k_factor"] == 4.0
    _, labels = loaded.search(x[:200] + 0.01, 8)
    assert (labels >= 0).all()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]

