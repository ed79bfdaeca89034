"""The pieces of the page's report: counts, histogram, PCA map, subsampling, and ``Predictor.embed``."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from model.errors import InputKindError
from model.predict import Predictor
from service.web.report import (
    MAP_MAX_POINTS,
    build_report,
    confidence_histogram,
    map_sample,
    principal_map,
    type_counts,
)
from tests.web.conftest import GENES, synthetic_counts, trained_bundle


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    """The trained model."""
    return Predictor(trained_bundle(), device="cpu", chunk_size=64)


def test_type_counts_lists_every_type_most_frequent_first() -> None:
    rows = type_counts(np.array(["T", "B", "T", "Unknown"], dtype=object), ["B", "NK", "T"])
    assert rows == [
        {"label": "T", "count": 2},
        {"label": "B", "count": 1},
        {"label": "Unknown", "count": 1},
        {"label": "NK", "count": 0},
    ]


def test_confidence_histogram_bins_over_unit_interval() -> None:
    histogram = confidence_histogram(np.array([0.0, 0.26, 0.5, 1.0]), bins=4)
    assert histogram == {"edges": [0.0, 0.25, 0.5, 0.75, 1.0], "counts": [1, 1, 1, 1]}


def test_principal_map_matches_numpy_pca_up_to_sign() -> None:
    rng = np.random.default_rng(0)
    embedding = rng.normal(size=(300, 6)) * np.array([5.0, 2.0, 1.0, 0.5, 0.2, 0.1])
    coordinates, explained = principal_map(embedding)
    centered = embedding - embedding.mean(axis=0)
    u, s, _ = np.linalg.svd(centered, full_matrices=False)
    expected = u[:, :2] * s[:2]
    assert np.allclose(np.abs(coordinates), np.abs(expected), atol=1e-8)
    assert explained == pytest.approx((s[:2] ** 2 / (s**2).sum()).tolist(), abs=1e-6)
    again, _ = principal_map(embedding.copy())
    assert np.array_equal(coordinates, again)


@pytest.mark.parametrize("shape", [(1, 8), (5, 1), (4, 3)])
def test_principal_map_degenerate_inputs(shape: tuple[int, int]) -> None:
    embedding = np.ones(shape) if shape[0] == 4 else np.arange(shape[0] * shape[1], dtype=float).reshape(shape)
    coordinates, explained = principal_map(embedding)
    assert coordinates.shape == (shape[0], 2) and np.isfinite(coordinates).all()
    assert len(explained) == 2
    if shape == (5, 1):
        assert np.array_equal(coordinates[:, 1], np.zeros(5)) and explained == [1.0, 0.0]


def test_map_sample_is_bounded_sorted_and_deterministic() -> None:
    assert map_sample(10).tolist() == list(range(10))
    sample = map_sample(MAP_MAX_POINTS + 5000)
    assert sample.size == MAP_MAX_POINTS and np.all(np.diff(sample) > 0)
    assert np.array_equal(sample, map_sample(MAP_MAX_POINTS + 5000))


def test_build_report_subsamples_large_maps() -> None:
    n_cells = MAP_MAX_POINTS + 10
    rng = np.random.default_rng(1)
    report = build_report(
        labels=np.array(["A"] * n_cells, dtype=object),
        confidence=rng.random(n_cells),
        embedding=rng.normal(size=(n_cells, 4)),
        cell_ids=[f"c{i}" for i in range(n_cells)],
        classes=["A", "B"],
        threshold=0.5,
    )
    assert report["map"]["n_points"] == MAP_MAX_POINTS and report["map"]["subsampled"]
    assert len(report["map"]["x"]) == MAP_MAX_POINTS and len(report["cells"]["label"]) == n_cells


def test_embed_is_the_last_hidden_layer_in_eval_mode(predictor: Predictor) -> None:
    counts, _ = synthetic_counts(100, seed=3)
    embedding = predictor.embed(counts, GENES)
    assert embedding.shape == (100, 8) and embedding.dtype == np.float32
    model_input = predictor.transform(counts, GENES)
    logits = predictor.model.head(predictor.model.embed(torch.from_numpy(model_input)))
    assert np.allclose(predictor.predict_proba(counts, GENES).argmax(axis=1), logits.argmax(dim=1).numpy())
    alone = predictor.embed(counts[:1], GENES)
    assert np.allclose(alone, embedding[:1], atol=1e-6), "a cell's embedding must not depend on the other cells"
    shuffled = predictor.embed(sp.csr_matrix(counts[:, ::-1]), GENES[::-1])
    assert np.allclose(shuffled, embedding, atol=1e-5)


def test_embed_checks_values_like_predict(predictor: Predictor) -> None:
    counts, _ = synthetic_counts(5, seed=3)
    with pytest.raises(InputKindError):
        predictor.embed(counts + 0.5, GENES)
