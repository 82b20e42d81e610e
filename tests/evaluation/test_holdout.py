"""evaluation/holdout.py: whole utterances held out, in runs of real-time blocks, seeded."""

import numpy as np
import pytest
from rvc_index.evaluation.holdout import Holdout, HoldoutError, choose_files, choose_windows, holdout_from_features


def test_whole_files_about_the_fraction_and_enough_rows_left():
    rows = [100] * 50
    chosen = choose_files(rows, 0.1, 8, np.random.default_rng(1))
    assert chosen == sorted(chosen) and 4 <= len(chosen) <= 6
    assert chosen == choose_files(rows, 0.1, 8, np.random.default_rng(1))
    with pytest.raises(HoldoutError, match="2 or more"):
        choose_files([500], 0.1, 8, np.random.default_rng(0))
    with pytest.raises(HoldoutError, match="keeping 450 rows"):
        choose_files([100, 300], 0.5, 450, np.random.default_rng(0))


def test_windows_are_contiguous_runs_within_their_files():
    windows = choose_windows([400, 30, 400], [0, 1, 2], 200, np.random.default_rng(2))
    assert sum(stop - start for _, start, stop in windows) <= 200
    for f, start, stop in windows:
        assert 0 <= start < stop <= [400, 30, 400][f]


def test_masks_and_ids_cover_the_held_out_ranges():
    holdout = Holdout(np.zeros((5, 4), np.float32), ((2, 4), (7, 8)), ("a.npy", "b.npy"), 10)
    assert holdout.row_ids().tolist() == [2, 3, 7] and holdout.held_rows == 3
    assert holdout.keep_mask(10).tolist() == [True, True, False, False, True, True, True, False, True, True]
    assert Holdout(np.zeros((1, 4), np.float32), (), ("q.npy",), 0).keep_mask(10) is None


def test_queries_are_the_frames_of_the_held_out_files(make_experiment, feature_set):
    features = feature_set(make_experiment("held", 4000, 256))
    holdout = holdout_from_features(features, 0.1, 300, seed=4)
    rows = np.concatenate([np.load(p) for p in sorted((features.experiment.feature_dir).glob("*.npy"))])
    assert 0 < len(holdout.queries) <= 300
    held = rows[holdout.row_ids()]
    assert all((held == q).all(axis=1).any() for q in holdout.queries[:20])
