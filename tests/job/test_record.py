"""job/record.py: the report as a typed record, written by dataclasses.asdict and read back from its JSON;
an older or foreign file is no record (the build runs again)."""

import dataclasses
import json
from pathlib import Path

import pytest
from rvc_index.job.record import BuildRecord, BuildResult


def test_the_record_round_trips_through_its_json(record_fields):
    record = BuildRecord(**record_fields)
    data = json.loads(json.dumps(dataclasses.asdict(record)))
    assert data["evaluation"] == {"skipped": "one file"} and data["index"]["n_list"] == 4
    assert data["index"]["k_factor"] is None and data["expansion"]["alpha"] is None  # not applied: null
    assert data["verdict"]["replaced"]["skipped"] == "unreadable" and data["config"]["name"] == "tips-plain"
    assert data["skipped_files"] == [["bad.npy", "truncated"]]
    assert BuildRecord.read({**data, "unknown_key": 1}) == record


@pytest.mark.parametrize("change", [lambda d: d.pop("verdict"), lambda d: d.update(rows="99"),
                                    lambda d: d["index"].update(n_list=[4]), lambda d: d.update(evaluation={})])
def test_a_file_missing_a_needed_field_or_of_another_type_is_no_record(change, record_fields):
    data = json.loads(json.dumps(dataclasses.asdict(BuildRecord(**record_fields))))
    change(data)
    assert BuildRecord.read(data) is None
    assert BuildRecord.read({"experiment": "spk"}) is None


def test_the_summary_row_uses_one_spelling_of_recall(record_fields):
    row = BuildResult("spk", "built", Path("a.index"), Path("r.json"), BuildRecord(**record_fields)).summary()
    assert row["recall_at_k"] is None and row["n_list"] == 4 and row["compression"] == "none" and "recall@8" not in row
