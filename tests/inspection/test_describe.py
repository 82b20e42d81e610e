"""inspection/describe.py: what an index holds, read from the index itself, and the rows RVC's k=8 needs."""

import dataclasses
import json

import faiss
import numpy as np
import pytest
from rvc_index.inspection.describe import TooFewRowsError, check_rows, describe_index, list_sizes
from rvc_index.runtime.records import from_json
from rvc_index.tools.synth import sample_frames


def test_an_ivf_is_described_with_its_lists_and_reads_back_from_its_json():
    x = sample_frames(2000, 64, seed=1)
    index = faiss.index_factory(64, "IVF16,Flat")
    index.train(x)
    index.add(x)
    faiss.extract_index_ivf(index).nprobe = 3
    sizes = list_sizes(index)
    assert sizes.shape == (16,) and sizes.sum() == 2000
    info = describe_index(index)
    assert (info.type, info.d, info.ntotal, info.metric, info.n_list, info.nprobe) == ("IndexIVFFlat", 64, 2000,
                                                                                       "L2", 16, 3)
    assert (info.list_size_min, info.list_size_max, info.empty_lists) == (sizes.min(), sizes.max(), 0)
    assert info.list_size_median == float(np.median(sizes)) and info.k_factor is None
    data = json.loads(json.dumps(dataclasses.asdict(info)))
    assert from_json(type(info), data) == info


def test_an_index_without_lists_and_a_refined_one_say_what_they_are():
    x = sample_frames(1000, 64, seed=2)
    flat = faiss.IndexFlatL2(64)
    flat.add(x)
    info = describe_index(flat)
    assert info.type == "IndexFlatL2" and info.ntotal == 1000 and info.n_list is None and info.list_size_min is None
    refine = faiss.index_factory(64, "IVF8,PQ32x4fs,RFlat")  # an earlier release's layout, still inspectable
    refine.train(x)
    refine.add(x)
    info = describe_index(refine)
    assert info.type == "IndexRefineFlat" and info.base_type == "IndexIVFPQFastScan" and info.n_list == 8
    assert info.k_factor == 1.0


def test_fewer_rows_than_rvcs_k_is_refused_naming_the_folder():
    check_rows(8)
    with pytest.raises(TooFewRowsError, match="only 7 rows in logs/x/3_feature768: .* k=8 .* at least 8 rows"):
        check_rows(7, "logs/x/3_feature768")
