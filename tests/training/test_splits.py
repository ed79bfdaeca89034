"""Hold-out batches and the stratified validation split."""

from __future__ import annotations

import numpy as np
import pytest

from model.errors import InputError
from training.splits import holdout_mask, make_split, stratified_validation


def _cells(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.choice(["a", "b", "c", "rare"], size=600, p=[0.5, 0.3, 0.19, 0.01])
    batches = rng.choice(["lab1", "lab2", "lab3"], size=600)
    return labels, batches


def test_holdout_cells_never_reach_training_or_validation(seed) -> None:
    labels, batches = _cells()
    split = make_split(labels, batches, ["lab2"], 0.2, seed=seed)
    assert set(batches[split.holdout]) == {"lab2"}
    assert "lab2" not in set(batches[split.train]) | set(batches[split.validation])
    assert split.train_batches == ("lab1", "lab3") and split.holdout_batches == ("lab2",)
    everything = np.concatenate([split.train, split.validation, split.holdout])
    assert np.array_equal(np.sort(everything), np.arange(600))


def test_validation_is_stratified_by_batch_and_class_and_deterministic(seed) -> None:
    labels, batches = _cells()
    train, validation = stratified_validation(labels, batches, 0.2, seed=seed)
    assert np.intersect1d(train, validation).size == 0
    for batch in ("lab1", "lab2", "lab3"):
        for label in ("a", "b", "c"):
            group = np.flatnonzero((batches == batch) & (labels == label))
            in_validation = np.isin(group, validation).sum()
            assert in_validation == min(round(0.2 * group.size), group.size - 1)
    # every group keeps at least one training cell, so every class stays trainable
    assert set(labels[train]) == set(labels)
    again_train, again_validation = stratified_validation(labels, batches, 0.2, seed=seed)
    assert np.array_equal(train, again_train) and np.array_equal(validation, again_validation)
    _, other = stratified_validation(labels, batches, 0.2, seed=seed + 1)
    assert not np.array_equal(validation, other)


def test_zero_fraction_gives_no_validation(seed) -> None:
    labels, batches = _cells()
    train, validation = stratified_validation(labels, batches, 0.0, seed=seed)
    assert validation.size == 0 and train.size == labels.size


def test_unknown_holdout_batch_lists_the_batches() -> None:
    _, batches = _cells()
    with pytest.raises(InputError, match=r"unknown hold-out batch 'lab9'.*'lab1', 'lab2', 'lab3'"):
        holdout_mask(batches, ["lab9"])
    with pytest.raises(InputError, match="nothing to train on"):
        holdout_mask(batches, ["lab1", "lab2", "lab3"])
