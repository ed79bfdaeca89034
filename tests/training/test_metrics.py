"""Scores: macro-F1 over known classes present, unseen types reported apart, ECE, per-batch scores."""

from __future__ import annotations

import numpy as np
import pytest

from training.metrics import classification_scores, expected_calibration_error, per_batch_scores


def test_scores_by_hand() -> None:
    truth = ["a", "a", "a", "b", "b", "c"]
    predicted = ["a", "a", "b", "b", "a", "c"]
    scores = classification_scores(truth, predicted, ["a", "b", "c", "d"])
    assert scores["accuracy"] == pytest.approx(4 / 6)
    # a: P=2/3 R=2/3; b: P=1/2 R=1/2; c: 1; d is absent from the truth and not averaged
    assert scores["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert scores["per_class"]["a"] == {"precision": pytest.approx(2 / 3), "recall": pytest.approx(2 / 3),
                                        "f1": pytest.approx(2 / 3), "support": 3}
    assert scores["per_class"]["d"]["support"] == 0
    assert scores["confusion"]["true"] == ["a", "b", "c"]
    assert scores["confusion"]["matrix"][0] == [2, 1, 0, 0]


def test_cells_of_types_the_model_never_saw_are_not_scored() -> None:
    truth = ["a", "b", "new", "new"]
    predicted = ["a", "b", "a", "b"]
    scores = classification_scores(truth, predicted, ["a", "b"])
    assert scores["accuracy"] == 1.0 and scores["macro_f1"] == 1.0
    assert scores["n_cells"] == 4 and scores["n_scored"] == 2
    assert scores["unseen_types"] == {"new": 2}
    assert scores["confusion"]["true"] == ["a", "b", "new"]


def test_no_scorable_cell_gives_nan() -> None:
    scores = classification_scores(["x"], ["a"], ["a", "b"], np.array([[0.9, 0.1]]))
    assert np.isnan(scores["macro_f1"]) and np.isnan(scores["ece"])


def test_ece() -> None:
    assert expected_calibration_error(np.array([1.0, 1.0]), np.array([True, True])) == pytest.approx(0.0)
    # one bin at 0.9 confidence with 50% accuracy
    assert expected_calibration_error(np.array([0.9, 0.9]), np.array([True, False])) == pytest.approx(0.4)
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    scores = classification_scores(["a", "b", "b"], ["a", "a", "b"], ["a", "b"], probabilities)
    expected = (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.7)) / 3
    assert scores["ece"] == pytest.approx(expected)
    assert scores["nll"] == pytest.approx(-np.mean(np.log([0.9, 0.2, 0.7])))


def test_per_batch_scores() -> None:
    result = per_batch_scores(
        np.array(["a", "b", "a", "b"]), np.array(["a", "b", "b", "b"]), np.array(["x", "x", "y", "y"]), ["a", "b"]
    )
    assert result["x"]["accuracy"] == 1.0 and result["y"]["accuracy"] == 0.5
