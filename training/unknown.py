"""The Unknown checks a bundle carries, chosen from the training run: the novelty detector and ``min_detected_genes``.

- The novelty detector (``config.novelty_method``, :class:`model.novelty.NoveltyDetector`) is fitted on
  the training cells' features (:func:`model.novelty.novelty_features`: standardized input, last hidden
  layer and logits, eval mode, fixed statistics; each scorer takes what it needs) and its threshold is the ``config.novelty_quantile`` of the scores of the *validation* cells,
  which come from the training labs only: a held-out lab is never looked at.
- ``min_detected_genes`` is the ``config.min_genes_quantile`` of the number of detected model genes
  (values above 0) per training cell, at least 1.

The served :class:`model.predict.Predictor` computes the same features of each cell alone, so the
threshold means at serving time what it meant here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from model.classifier import CellTypeClassifier
from model.novelty import NoveltyDetector, novelty_features
from training.config import NO_NOVELTY, TrainConfig
from training.data import LabeledData

LOGIT_METHODS = ("energy", "max_softmax")
"""Scorers of the logits, which take the fitted softmax temperature (also as parts of a combined method)."""
MAX_FIT_CELLS = 50_000
"""At most this many training cells (a class-stratified sample) fit the novelty detector, and as many
validation cells calibrate it."""
MAX_FEATURE_VALUES = 200_000_000
"""Fewer cells for wide models: the standardized input of the sample stays under 800 MB (float32)."""
MIN_CELLS_PER_CLASS = 1_000
"""The sample keeps at least this many cells of every class (all of them, for smaller classes)."""


@dataclass(frozen=True)
class UnknownChecks:
    """What :func:`fit_unknown_checks` chose.

    Attributes:
        novelty: the calibrated detector, or ``None`` (``novelty_method = none``, or no validation cells).
        min_detected_genes: least number of detected model genes of a cell that is typed.
        report: JSON-ready facts for ``metrics.json`` (method, threshold, cell counts, why none).
    """

    novelty: NoveltyDetector | None
    min_detected_genes: int
    report: dict[str, Any]


def detected_genes(X: sp.csr_matrix | np.ndarray) -> np.ndarray:
    """Number of values above 0 in each row (the detected genes of each cell)."""
    if sp.issparse(X):
        return np.asarray((X > 0).sum(axis=1), dtype=np.int64).ravel()
    return np.count_nonzero(np.asarray(X) > 0, axis=1)


def min_detected_genes(data: LabeledData, rows: np.ndarray, quantile: float) -> int:
    """The ``quantile`` of detected genes per cell over ``rows`` of ``data`` (rounded down), at least 1."""
    if len(rows) == 0:
        return 1
    counts = np.concatenate(  # in chunks: the data may be read from disk (training.streaming)
        [detected_genes(data.X[rows[start : start + 65536]]) for start in range(0, len(rows), 65536)]
    )
    return max(1, math.floor(float(np.quantile(counts, quantile))))


def fit_sample(targets: np.ndarray, seed: int, max_cells: int = MAX_FIT_CELLS) -> np.ndarray:
    """Positions into ``targets`` of the cells that fit the detector: all, or a class-stratified sample.

    Each class keeps its share of ``max_cells``, but at least :data:`MIN_CELLS_PER_CLASS` cells (all of a
    smaller class), so that no class mean is estimated from a handful of cells.
    """
    n = len(targets)
    if n <= max_cells:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    kept = []
    for label in np.unique(targets):
        members = np.flatnonzero(targets == label)
        size = min(len(members), max(MIN_CELLS_PER_CLASS, round(len(members) * max_cells / n)))
        kept.append(rng.choice(members, size=size, replace=False))
    return np.sort(np.concatenate(kept))


@torch.no_grad()
def model_features(
    model: CellTypeClassifier, data: LabeledData, rows: np.ndarray, device: torch.device, chunk: int = 4096
) -> dict[str, np.ndarray]:
    """:func:`model.novelty.novelty_features` of ``rows`` (eval mode, fixed statistics), as float32 arrays."""
    model.eval()
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(rows), chunk):
        inputs = torch.from_numpy(data.model_input(rows[start : start + chunk])).to(device)
        for kind, values in novelty_features(model, inputs).items():
            parts.setdefault(kind, []).append(values.float().cpu().numpy())
    return {kind: np.concatenate(values) for kind, values in parts.items()}


def fit_unknown_checks(
    config: TrainConfig,
    model: CellTypeClassifier,
    data: LabeledData,
    targets: np.ndarray,
    train_rows: np.ndarray,
    validation_rows: np.ndarray,
    temperature: float,
    device: torch.device,
) -> UnknownChecks:
    """Fit and calibrate the novelty detector and choose ``min_detected_genes`` (see the module docstring).

    Args:
        config: the run's config (``novelty_method``, ``novelty_quantile``, ``min_genes_quantile``, ``seed``).
        model: the trained classifier.
        data: the cells over the model's genes.
        targets: class index of every cell of ``data``.
        train_rows, validation_rows: the training and validation cells (both from the training labs).
        temperature: the fitted softmax temperature (passed to the logit scorers).
        device: where ``model`` is.
    """
    minimum = min_detected_genes(data, train_rows, config.min_genes_quantile)
    report: dict[str, Any] = {"min_detected_genes": minimum, "min_genes_quantile": config.min_genes_quantile}
    if config.novelty_method == NO_NOVELTY:
        return UnknownChecks(None, minimum, {**report, "novelty": None, "novelty_skipped": "novelty_method = none"})
    if len(validation_rows) == 0:
        skipped = "no validation cells to choose the threshold on (validation_fraction = 0)"
        return UnknownChecks(None, minimum, {**report, "novelty": None, "novelty_skipped": skipped})
    max_cells = max(MIN_CELLS_PER_CLASS, min(MAX_FIT_CELLS, MAX_FEATURE_VALUES // data.n_genes))
    fit_rows = train_rows[fit_sample(targets[train_rows], config.seed, max_cells)]
    method = config.novelty_method
    params = {"temperature": temperature} if set(method.split("+")) & set(LOGIT_METHODS) else {}
    fitted = NoveltyDetector.fit(
        method, model_features(model, data, fit_rows, device), targets[fit_rows], model.config.n_classes, **params
    )
    # Calibrate the detector as the bundle holds it (float32 arrays), so its threshold means the same served.
    detector = NoveltyDetector.from_state(*fitted.to_state())
    calibration_rows = validation_rows[fit_sample(targets[validation_rows], config.seed, max_cells)]
    detector.calibrate(model_features(model, data, calibration_rows, device), config.novelty_quantile)
    metadata, _ = detector.to_state()
    return UnknownChecks(detector, minimum, {**report, "novelty": metadata})
