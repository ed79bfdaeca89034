"""Classification scores: accuracy, macro-F1, per-class report, confusion matrix, ECE, per-batch scores.

Only cells whose true type the model knows are scored. Cells of types the model never saw in training
cannot be classified correctly by construction; they are counted and reported separately
(``unseen_types``), never folded into accuracy or F1. Macro-F1 averages over the classes that are
present in the scored truth of the split, so a class absent from a held-out batch neither helps nor hurts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

ECE_BINS = 15
"""Number of equal-width confidence bins of the expected calibration error."""


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error: bin-size-weighted mean of ``|accuracy - mean confidence|`` per bin.

    Args:
        confidence: the probability of the predicted class, per cell, in [0, 1].
        correct: whether each prediction was right.
        n_bins: number of equal-width bins over [0, 1]; a confidence of exactly 1 goes in the last bin.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if confidence.size == 0:
        return float("nan")
    bins = np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)
    confidence_sum = np.bincount(bins, weights=confidence, minlength=n_bins)
    correct_sum = np.bincount(bins, weights=correct, minlength=n_bins)
    return float(np.abs(correct_sum - confidence_sum).sum() / confidence.size)


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, list]:
    """Per-bin cell count, mean confidence and accuracy (NaN for empty bins), for reliability diagrams."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    bins = np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(bins, weights=confidence, minlength=n_bins) / counts
        accuracy = np.bincount(bins, weights=correct, minlength=n_bins) / counts
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1).tolist(),
        "count": counts.tolist(),
        "confidence": mean_confidence.tolist(),
        "accuracy": accuracy.tolist(),
    }


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def classification_scores(
    true_labels: Sequence[str] | np.ndarray,
    predicted_labels: Sequence[str] | np.ndarray,
    classes: Sequence[str],
    probabilities: np.ndarray | None = None,
) -> dict[str, Any]:
    """Score predictions against the truth over the model's ``classes``.

    Args:
        true_labels: the true type of each cell (may include types the model does not know).
        predicted_labels: the predicted type of each cell (argmax over ``classes``).
        classes: the model's classes, in the order of the ``probabilities`` columns.
        probabilities: optional ``(n_cells, n_classes)`` probabilities; adds ``ece`` and ``nll``.

    Returns:
        A JSON-ready dict: ``n_cells`` (all cells), ``n_scored`` (cells of known types), ``accuracy``,
        ``macro_f1`` (over known classes present in the scored truth), ``per_class`` (precision,
        recall, f1, support for each model class), ``unseen_types`` (type -> cell count, not scored),
        ``confusion`` (rows: true types incl. unseen ones, columns: model classes) and, with
        probabilities, ``ece`` and ``nll``. Scores are NaN when no cell can be scored.
    """
    truth = np.asarray(true_labels, dtype=object).astype(str)
    predicted = np.asarray(predicted_labels, dtype=object).astype(str)
    if truth.shape != predicted.shape:
        raise ValueError(f"{truth.size} true labels but {predicted.size} predictions")
    class_list = [str(c) for c in classes]
    known = np.isin(truth, class_list)
    scored_truth, scored_predicted = truth[known], predicted[known]
    n_scored = int(known.sum())
    present = [c for c in class_list if np.any(scored_truth == c)]

    per_class: dict[str, dict[str, float | int]] = {}
    for name in class_list:
        is_true, is_predicted = scored_truth == name, scored_predicted == name
        hits = int(np.sum(is_true & is_predicted))
        support, n_predicted = int(is_true.sum()), int(is_predicted.sum())
        precision = hits / n_predicted if n_predicted else 0.0
        recall = hits / support if support else 0.0
        per_class[name] = {
            "precision": precision,
            "recall": recall,
            "f1": _f1(precision, recall),
            "support": support,
        }
    macro_f1 = float(np.mean([per_class[c]["f1"] for c in present])) if present else float("nan")
    accuracy = float(np.mean(scored_truth == scored_predicted)) if n_scored else float("nan")
    unseen, unseen_counts = np.unique(truth[~known], return_counts=True)

    row_labels = present + [str(u) for u in unseen]
    row_index = {name: i for i, name in enumerate(row_labels)}
    column_index = {name: j for j, name in enumerate(class_list)}
    matrix = np.zeros((len(row_labels), len(class_list)), dtype=np.int64)
    for t, p in zip(truth, predicted, strict=True):
        if t in row_index and p in column_index:
            matrix[row_index[t], column_index[p]] += 1

    scores: dict[str, Any] = {
        "n_cells": int(truth.size),
        "n_scored": n_scored,
        "accuracy": accuracy,
        "macro_f1": macro_f1,
        "per_class": per_class,
        "unseen_types": {str(u): int(n) for u, n in zip(unseen, unseen_counts, strict=True)},
        "confusion": {"true": row_labels, "predicted": class_list, "matrix": matrix.tolist()},
    }
    if probabilities is not None:
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if n_scored:
            target = np.array([column_index[t] for t in scored_truth], dtype=np.int64)
            scored_probabilities = probabilities[known]
            confidence = scored_probabilities.max(axis=1)
            chosen = scored_probabilities.argmax(axis=1)
            scores["ece"] = expected_calibration_error(confidence, chosen == target)
            picked = scored_probabilities[np.arange(n_scored), target]
            scores["nll"] = float(-np.mean(np.log(np.clip(picked, 1e-12, 1.0))))
        else:
            scores["ece"] = scores["nll"] = float("nan")
    return scores


def summary(scores: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a score dict (accuracy, macro-F1, cell counts and ECE when present)."""
    keys = ("accuracy", "macro_f1", "n_cells", "n_scored", "ece")
    return {k: scores[k] for k in keys if k in scores}


def per_batch_scores(
    true_labels: np.ndarray,
    predicted_labels: np.ndarray,
    batches: np.ndarray,
    classes: Sequence[str],
    probabilities: np.ndarray | None = None,
) -> dict[str, dict[str, Any]]:
    """:func:`classification_scores` for each batch separately, keyed by batch name (sorted)."""
    batches = np.asarray(batches, dtype=object).astype(str)
    result = {}
    for batch in sorted(set(batches.tolist())):
        rows = batches == batch
        result[batch] = classification_scores(
            np.asarray(true_labels)[rows],
            np.asarray(predicted_labels)[rows],
            classes,
            None if probabilities is None else probabilities[rows],
        )
    return result
