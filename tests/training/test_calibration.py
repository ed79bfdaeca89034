"""Temperature scaling fixes an overconfident model without changing its predictions."""

from __future__ import annotations

import numpy as np
import pytest

from training.calibration import fit_temperature, softmax
from training.metrics import classification_scores


def _overconfident(seed: int = 0, n: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 3, n)
    logits = rng.normal(0, 1, (n, 3))
    logits[np.arange(n), targets] += 1.5  # a decent model ...
    return logits * 4.0, targets  # ... made overconfident


def _nll(probabilities: np.ndarray, targets: np.ndarray) -> float:
    return float(-np.mean(np.log(probabilities[np.arange(len(targets)), targets])))


def test_temperature_lowers_nll_and_ece_on_an_overconfident_model() -> None:
    logits, targets = _overconfident()
    temperature = fit_temperature(logits, targets)
    assert temperature > 2.0
    classes = ["a", "b", "c"]
    truth = np.array(classes)[targets]
    predicted = np.array(classes)[logits.argmax(1)]
    before = classification_scores(truth, predicted, classes, softmax(logits))
    after = classification_scores(truth, predicted, classes, softmax(logits, temperature))
    assert _nll(softmax(logits, temperature), targets) < _nll(softmax(logits), targets) - 0.1
    assert after["ece"] < before["ece"] / 2
    assert np.array_equal(softmax(logits, temperature).argmax(1), logits.argmax(1))
    # the optimum: NLL is not lower a little to either side
    for other in (temperature * 0.9, temperature * 1.1):
        assert _nll(softmax(logits, temperature), targets) <= _nll(softmax(logits, other), targets)


def test_temperature_of_no_cells_is_one() -> None:
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int)) == 1.0
    assert softmax(np.array([[1000.0, 0.0]])).sum() == pytest.approx(1.0)
