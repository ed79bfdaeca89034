"""Which cells train, validate and test a model.

Held-out batches (labs) are never seen in training: they measure how the model does on a lab it never
met, and are reported separately. The validation cells (for early stopping, model selection and
calibration) come from the training batches, stratified by (batch, cell type), deterministically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from model.errors import InputError


@dataclass(frozen=True)
class Split:
    """Row indices (sorted) of each part of a data set and the batches behind them.

    Attributes:
        train: cells the model learns from.
        validation: cells of the training batches kept for early stopping and calibration.
        holdout: cells of the held-out batches, never seen in training.
        train_batches: the batches of ``train`` and ``validation``.
        holdout_batches: the held-out batches.
    """

    train: np.ndarray
    validation: np.ndarray
    holdout: np.ndarray
    train_batches: tuple[str, ...]
    holdout_batches: tuple[str, ...]


def holdout_mask(batches: np.ndarray, holdout_batches: Sequence[str]) -> np.ndarray:
    """Boolean mask of the cells in ``holdout_batches``.

    Raises:
        InputError: a named batch does not exist (the message lists the batches there are), or every
            batch would be held out.
    """
    batches = np.asarray(batches).astype(str)
    available = sorted(set(batches.tolist()))
    unknown = [b for b in holdout_batches if b not in available]
    if unknown:
        raise InputError(
            f"unknown hold-out batch {', '.join(repr(b) for b in unknown)}; the batches are: "
            f"{', '.join(repr(b) for b in available)}"
        )
    if available and set(holdout_batches) >= set(available):
        raise InputError(
            f"every batch ({', '.join(available)}) is held out, which leaves nothing to train on; "
            "hold out fewer batches"
        )
    return np.isin(batches, list(holdout_batches))


def stratified_validation(
    labels: np.ndarray, batches: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split cells into (train, validation) row indices, stratified by (batch, label).

    Each (batch, label) group of ``n`` cells gives ``round(fraction * n)`` random cells to validation,
    but always keeps at least one in training. The same inputs always give the same split.

    Args:
        labels: cell type per cell.
        batches: batch per cell.
        fraction: share of each group kept for validation, in [0, 1).
        seed: seed of the shuffling.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    labels = np.asarray(labels).astype(str)
    batches = np.asarray(batches).astype(str)
    rng = np.random.default_rng(seed)
    validation: list[np.ndarray] = []
    groups = sorted(set(zip(batches.tolist(), labels.tolist(), strict=True)))
    for batch, label in groups:
        members = np.flatnonzero((batches == batch) & (labels == label))
        n_validation = min(int(round(fraction * members.size)), members.size - 1)
        if n_validation > 0:
            validation.append(rng.permutation(members)[:n_validation])
    validation_rows = np.sort(np.concatenate(validation)) if validation else np.zeros(0, dtype=np.int64)
    train_rows = np.setdiff1d(np.arange(labels.size), validation_rows)
    return train_rows, validation_rows


def make_split(
    labels: np.ndarray,
    batches: np.ndarray,
    holdout_batches: Sequence[str],
    validation_fraction: float,
    seed: int,
) -> Split:
    """Hold out ``holdout_batches`` entirely, then split the rest into train and validation.

    Raises:
        InputError: for an unknown hold-out batch, or when every batch is held out.
    """
    labels = np.asarray(labels).astype(str)
    batches = np.asarray(batches).astype(str)
    held = holdout_mask(batches, holdout_batches)
    kept = np.flatnonzero(~held)
    train_local, validation_local = stratified_validation(labels[kept], batches[kept], validation_fraction, seed)
    return Split(
        train=kept[train_local],
        validation=kept[validation_local],
        holdout=np.flatnonzero(held),
        train_batches=tuple(sorted(set(batches[kept].tolist()))),
        holdout_batches=tuple(sorted(set(holdout_batches))),
    )
