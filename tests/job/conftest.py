"""Shared fixtures of the job layer's tests."""

import pytest
from rvc_index.config.loading import load_config
from rvc_index.evaluation.result import EvaluationSkipped, ReplacedIndex, Verdict
from rvc_index.job.record import (
    CompressionRecord,
    ExpansionRecord,
    IndexRecord,
    MemoryRecord,
    NamesRecord,
    PlanRecord,
)


@pytest.fixture
def record_fields():
    """Every field of a small BuildRecord (a build whose evaluation was skipped), as keyword arguments."""
    return dict(experiment="spk", feature_dir="/f", version="v2", dim=768, files=3, rows_declared=100, rows=99,
                index_file="a.index", index_bytes=10, fingerprint="f", config_fingerprint="c", code_version="v",
                faiss_version="1.15", compression=CompressionRecord(False, "fits", 0, "minibatch", "none"),
                expansion=ExpansionRecord(False),
                index=IndexRecord("IndexIVFFlat", 768, 99, "L2", n_list=4, nprobe=2, factory="IVF4,Flat", lists="flat",
                                  holdings={"big": 304128}, notes=("a note",)),
                evaluation=EvaluationSkipped("one file"),
                verdict=Verdict(("verdict: not measured: one file",), ReplacedIndex("old.index", skipped="unreadable")),
                plan=PlanRecord(99, 99, "cpu", 128.0, ("99 rows x 768",), {"check": 1.5}),
                memory=MemoryRecord("on", 128.0, None, 12.5, {"check": 1.5}),
                names=NamesRecord("spk", "spk", True), config=load_config("tips-plain"),
                skipped_files=(("bad.npy", "truncated"),), retired=("old.index.retired",))
