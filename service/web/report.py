"""What the web page shows about one scored upload: counts per type, confidence histogram, a 2-D map, the cells.

The map places every cell by the first two principal components of the model's last hidden layer
(PCA by numpy SVD of the hidden layer's scatter matrix), so cells the model finds alike sit together; at most :data:`MAP_MAX_POINTS`
cells (an even random sample, fixed seed) are sent to the browser.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from model.bundle import UNKNOWN_LABEL

MAP_MAX_POINTS = 20_000
"""Most cells drawn on the map; larger uploads are subsampled."""
HISTOGRAM_BINS = 20
"""Bins of the confidence histogram over [0, 1]."""
DECIMALS = 4
"""Decimals kept for confidences and map coordinates (keeps the answer small)."""


def type_counts(labels: np.ndarray, classes: list[str]) -> list[dict[str, Any]]:
    """Cells per predicted type, every model class and ``Unknown`` included, most frequent first."""
    names, counts = np.unique(np.asarray(labels, dtype=str), return_counts=True)
    found = dict(zip(names.tolist(), counts.tolist(), strict=True))
    rows = [{"label": name, "count": int(found.get(name, 0))} for name in [*classes, UNKNOWN_LABEL]]
    return sorted(rows, key=lambda row: (-row["count"], row["label"]))


def confidence_histogram(
    confidence: np.ndarray, bins: int = HISTOGRAM_BINS
) -> dict[str, list[float] | list[int]]:
    """Counts of cells per confidence bin: ``edges`` (bins + 1 values over [0, 1]) and ``counts``."""
    counts, edges = np.histogram(np.asarray(confidence, dtype=np.float64), bins=bins, range=(0.0, 1.0))
    return {"edges": np.round(edges, 6).tolist(), "counts": counts.tolist()}


def principal_map(embedding: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Cells projected on the first two principal components of ``embedding`` (cells x width).

    Returns the ``(n_cells, 2)`` coordinates and the share of variance each axis explains. Each
    component's sign is fixed (largest loading positive) so the same cells always give the same map.
    A single cell, or an embedding without variance, maps to the origin.
    """
    values = np.asarray(embedding, dtype=np.float64)
    coordinates = np.zeros((values.shape[0], 2), dtype=np.float64)
    centered = values - values.mean(axis=0, keepdims=True)
    if values.shape[0] < 2 or not np.any(centered):
        return coordinates, [0.0, 0.0]
    # SVD of the width x width scatter matrix: same axes as the SVD of the cells, memory independent of n_cells
    _, variance, components = np.linalg.svd(centered.T @ centered)
    n_axes = min(2, components.shape[0])
    components = components[:n_axes]
    signs = np.sign(components[np.arange(n_axes), np.abs(components).argmax(axis=1)])
    components = components * signs[:, None]
    coordinates[:, :n_axes] = centered @ components.T
    explained = (variance[:n_axes] / variance.sum()).tolist() + [0.0] * (2 - n_axes)
    return coordinates, [round(share, 6) for share in explained]


def map_sample(n_cells: int, max_points: int = MAP_MAX_POINTS, seed: int = 0) -> np.ndarray:
    """Indices of the cells to draw, in file order: all of them, or ``max_points`` chosen at random."""
    if n_cells <= max_points:
        return np.arange(n_cells)
    return np.sort(np.random.default_rng(seed).choice(n_cells, size=max_points, replace=False))


def build_report(
    *,
    labels: np.ndarray,
    confidence: np.ndarray,
    embedding: np.ndarray,
    cell_ids: list[str],
    classes: list[str],
    threshold: float,
) -> dict[str, Any]:
    """The page's data for one upload (see the ``/v1/report`` route for the fields)."""
    n_cells = len(cell_ids)
    label_list = np.asarray(labels, dtype=str).tolist()
    coordinates, explained = principal_map(embedding)
    shown = map_sample(n_cells)
    n_unknown = sum(1 for label in label_list if label == UNKNOWN_LABEL)
    return {
        "n_cells": n_cells,
        "threshold": threshold,
        "unknown": {"count": n_unknown, "share": round(n_unknown / n_cells, 6) if n_cells else 0.0},
        "counts": type_counts(labels, classes),
        "confidence_histogram": confidence_histogram(confidence),
        "map": {
            "method": "PCA of the model's last hidden layer",
            "explained_variance": explained,
            "n_points": int(shown.size),
            "subsampled": bool(shown.size < n_cells),
            "cell": shown.tolist(),
            "x": np.round(coordinates[shown, 0], DECIMALS).tolist(),
            "y": np.round(coordinates[shown, 1], DECIMALS).tolist(),
        },
        "cells": {
            "cell_id": list(cell_ids),
            "label": label_list,
            "confidence": np.round(np.asarray(confidence, dtype=np.float64), DECIMALS).tolist(),
        },
    }
