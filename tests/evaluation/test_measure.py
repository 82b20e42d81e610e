"""How an index is measured without extra passes: the -1 share from list sizes, stored rows by id."""

import faiss
import numpy as np
import pytest
from rvc_index.compute.backend import faiss_threads
from rvc_index.evaluation.measure import short_search_share, stored_rows
from rvc_index.tools.synth import utterances


def test_short_search_share_is_what_the_search_returns():
    data = np.concatenate(list(utterances(3000, 64, [4, 64])))
    index = faiss.index_factory(64, "IVF300,Flat")  # ~10 vectors per list: nprobe 1 often comes back short
    index.train(data)
    index.add(data)
    queries = np.concatenate(list(utterances(400, 64, [5, 64])))
    for nprobe in (1, 2, 8):
        faiss.extract_index_ivf(index).nprobe = nprobe
        _, labels = index.search(queries, 8)
        assert short_search_share(index, queries) == pytest.approx((labels < 0).any(axis=1).mean())
    faiss.extract_index_ivf(index).nprobe = 1
    assert short_search_share(index, queries) > 0.05  # the case above really has short searches


@pytest.mark.parametrize("factory", ["IVF16,Flat", "IVF16,PQ16x4fs", "IVF16,PQ16x4fs,RFlat", "Flat", "IVF16,SQ8"])
def test_stored_rows_are_what_reconstruct_n_returns(factory):
    data = np.concatenate(list(utterances(3000, 64, [2, 64])))
    index = faiss.index_factory(64, factory)
    with faiss_threads(1):  # 4-bit PQ training: tiny parallel regions crawl on a loaded machine
        index.train(data)
    index.add(data)
    ids = np.array([2999, 0, 5, 1500, 77])  # any order
    np.testing.assert_array_equal(stored_rows(index, ids), index.reconstruct_n(0, index.ntotal)[ids])
    assert stored_rows(index, np.empty(0, np.int64)).shape == (0, 64)
    if "IVF" in factory and "RFlat" not in factory:
        with pytest.raises(IndexError, match="1 of 2 ids"):
            stored_rows(index, np.array([1, 3000]))
