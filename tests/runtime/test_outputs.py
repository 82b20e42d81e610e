import os

import pytest
from rvc_index.runtime.outputs import atomic_path, remove_stale_temps, temp_name, write_json_atomic, write_text_atomic


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    final = tmp_path / "index.bin"
    final.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk gone")
    assert final.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["index.bin"]


def test_successful_write_replaces(tmp_path):
    final = tmp_path / "r.json"
    write_json_atomic(final, {"a": 1})
    write_json_atomic(final, {"a": 2})
    assert final.read_text().strip().endswith("}") and '"a": 2' in final.read_text()
    assert sorted(os.listdir(tmp_path)) == ["r.json"]


def test_stale_temps_are_cleaned(tmp_path):
    write_text_atomic(tmp_path / "keep.txt", "x")
    stale = temp_name(tmp_path / "other.index")
    stale.write_text("killed writer")
    assert remove_stale_temps(tmp_path) == [stale]
    assert sorted(os.listdir(tmp_path)) == ["keep.txt"]
