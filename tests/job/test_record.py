"""job/record.py: the report as a typed record, read back from older or foreign files without failing."""

from pathlib import Path

from rvc_index.job.record import BuildRecord, BuildResult

FIELDS = dict(experiment="spk", feature_dir="/f", version="v2", dim=768, files=3, rows_declared=100, rows=99,
              index_file="a.index", index_bytes=10, fingerprint="f", config_fingerprint="c", code_version="v",
              faiss_version="1.15")


def test_the_record_round_trips_through_its_json():
    record = BuildRecord(**FIELDS, evaluation={"recall_at_k": 0.97})
    data = record.to_dict()
    assert data["evaluation"]["recall_at_k"] == 0.97 and data["retired"] == []
    assert BuildRecord.from_dict({**data, "unknown_key": 1}) == record


def test_a_file_missing_a_needed_field_is_no_record():
    assert BuildRecord.from_dict({"experiment": "spk"}) is None


def test_the_summary_row_uses_one_spelling_of_recall():
    record = BuildRecord(**FIELDS, evaluation={"recall_at_k": 0.5}, index={"n_list": 4, "nprobe": 2})
    row = BuildResult("spk", "built", Path("a.index"), Path("r.json"), record).summary()
    assert row["recall_at_k"] == 0.5 and row["n_list"] == 4 and "recall@8" not in row
