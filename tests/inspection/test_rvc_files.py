"""inspection/rvc_files.py: RVC's and Applio's file rules, and the checks an output place must pass."""

import os

import pytest
from rvc_index.inspection.rvc_files import (
    MAX_STEM_BYTES,
    OutputError,
    check_index_path,
    check_output_dir,
    check_stem,
    listed_by_lookups,
)


def test_the_lookups_list_index_files_without_the_word_they_rewrite():
    assert listed_by_lookups("added_IVF10_Flat_nprobe_1_voice_v2.index") and listed_by_lookups("voice.index")
    assert not listed_by_lookups("trained_IVF10_Flat_nprobe_1_voice_v2.index")
    assert not listed_by_lookups("voice.index.retired") and not listed_by_lookups("total_fea.npy")


def test_an_output_folder_is_refused_when_rvc_rewrites_it_or_it_cannot_be_written(tmp_path):
    with pytest.raises(OutputError, match="'trained' in the output path"):
        check_output_dir(tmp_path / "trained" / "out")
    assert not (tmp_path / "trained").exists()  # refused before anything is created
    check_output_dir(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(OutputError, match="not writable"):
            check_output_dir(locked)


def test_names_and_index_paths_rvc_would_never_find_are_refused(tmp_path):
    check_stem("voice", "voice")
    check_stem("v", "x" * MAX_STEM_BYTES)
    with pytest.raises(OutputError, match=f"the experiment name is {MAX_STEM_BYTES + 1} bytes"):
        check_stem("v", "x" * (MAX_STEM_BYTES + 1))
    with pytest.raises(OutputError, match="'trained' in the experiment name"):
        check_stem("my-trained-voice", "my-trained-voice")
    check_index_path(tmp_path / "voice.index")
    for name, problem in ((".index", "must name a '<something>.index'"), ("voice.idx", "must name"),
                          ("trained.index", "'trained' in the index file name")):
        with pytest.raises(OutputError, match=problem):
            check_index_path(tmp_path / name)
