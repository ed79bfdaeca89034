"""Choosing the bundle's Unknown checks at training: min_detected_genes, the fit sample, the detector."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from model.bundle import ModelBundle, load_bundle, save_bundle
from model.classifier import CellTypeClassifier, ClassifierConfig
from model.novelty import HIDDEN, INPUT, LOGITS, METHODS, hidden_features
from model.predict import Predictor
from training.config import ConfigError, TrainConfig
from training.data import LabeledData
from training.unknown import (
    detected_genes,
    fit_sample,
    fit_unknown_checks,
    min_detected_genes,
    model_features,
)


def labeled(X: np.ndarray) -> LabeledData:
    n = X.shape[0]
    return LabeledData(
        X=sp.csr_matrix(X, dtype=np.float32),
        genes=[f"G{i}" for i in range(X.shape[1])],
        labels=np.array(["a", "b"] * (n // 2)),
        batches=np.array(["lab"] * n),
        cell_ids=np.array([f"c{i}" for i in range(n)]),
        input_kind="counts",
    )


def test_detected_genes_counts_values_above_zero_sparse_or_dense():
    X = np.array([[0, 1, 2, 0], [0, 0, 0, 0], [3, 3, 3, 3]], dtype=np.float32)
    with_explicit_zero = sp.csr_matrix((np.array([0.0, 1.0]), np.array([0, 1]), np.array([0, 2, 2, 2])), shape=(3, 4))
    assert detected_genes(X).tolist() == detected_genes(sp.csr_matrix(X)).tolist() == [2, 0, 4]
    assert detected_genes(with_explicit_zero).tolist() == [1, 0, 0]


def test_min_detected_genes_is_a_low_quantile_and_at_least_one():
    X = np.zeros((1000, 50), dtype=np.float32)
    for row in range(1000):
        X[row, : 10 + row % 30] = 1
    data = labeled(X)
    rows = np.arange(1000)
    assert min_detected_genes(data, rows, 0.001) == 10
    assert min_detected_genes(data, rows, 0.5) == int(np.quantile(10 + rows % 30, 0.5))
    assert min_detected_genes(labeled(np.zeros((10, 5))), np.arange(10), 0.001) == 1
    assert min_detected_genes(data, np.arange(0), 0.001) == 1


def test_fit_sample_is_stratified_and_keeps_rare_classes_whole():
    targets = np.r_[np.zeros(9_000, dtype=int), np.ones(500, dtype=int), np.full(1_500, 2)]
    kept = fit_sample(targets, seed=0, max_cells=3_000)
    counts = np.bincount(targets[kept])
    assert counts[1] == 500 and counts[2] == 1_000 and counts[0] == round(9_000 * 3_000 / 11_000)
    assert np.all(np.diff(kept) > 0)
    np.testing.assert_array_equal(fit_sample(targets[:100], seed=0, max_cells=3_000), np.arange(100))


def test_model_features_are_the_eval_mode_input_hidden_features_and_logits():
    torch.manual_seed(0)
    model = CellTypeClassifier(ClassifierConfig(n_genes=6, n_classes=2, hidden_sizes=(8, 4)))
    data = labeled(np.random.default_rng(0).poisson(3, size=(20, 6)).astype(np.float32))
    rows = np.arange(3, 17)
    features = model_features(model, data, rows, torch.device("cpu"), chunk=5)
    inputs = torch.from_numpy(data.model_input(rows))
    with torch.no_grad():
        np.testing.assert_allclose(features[INPUT], model.eval().standardize(inputs).numpy(), atol=1e-6)
        np.testing.assert_allclose(features[HIDDEN], hidden_features(model, inputs).numpy(), atol=1e-6)
        np.testing.assert_allclose(features[LOGITS], model(inputs).numpy(), atol=1e-6)


def test_no_detector_without_validation_cells_or_when_switched_off():
    torch.manual_seed(0)
    model = CellTypeClassifier(ClassifierConfig(n_genes=6, n_classes=2, hidden_sizes=(8, 4)))
    data = labeled(np.random.default_rng(0).poisson(3, size=(20, 6)).astype(np.float32))
    targets = np.tile([0, 1], 10)
    args = (model, data, targets, np.arange(14), np.arange(14, 20), 1.0, torch.device("cpu"))
    switched_off = fit_unknown_checks(TrainConfig(novelty_method="none"), *args)
    assert switched_off.novelty is None and switched_off.report["novelty_skipped"] == "novelty_method = none"
    no_validation = fit_unknown_checks(TrainConfig(), model, data, targets, np.arange(20), np.arange(0), 1.0,
                                       torch.device("cpu"))
    assert no_validation.novelty is None and "validation" in no_validation.report["novelty_skipped"]
    energy = fit_unknown_checks(TrainConfig(novelty_method="energy", novelty_quantile=0.5), *args)
    assert energy.novelty.method == "energy" and np.isfinite(energy.novelty.threshold)


@pytest.mark.parametrize(
    ("key", "value"), [("novelty_method", "isolation_forest"), ("novelty_quantile", 1.0), ("min_genes_quantile", -0.1)]
)
def test_bad_unknown_check_keys_are_refused(key, value):
    with pytest.raises(ConfigError, match=key):
        TrainConfig(**{key: value})


@pytest.mark.parametrize("method", METHODS)
def test_every_method_is_fitted_bundled_and_served_with_the_calibrated_threshold(method, tmp_path):
    torch.manual_seed(0)
    model = CellTypeClassifier(ClassifierConfig(n_genes=6, n_classes=2, hidden_sizes=(8, 4))).eval()
    data = labeled(np.random.default_rng(0).poisson(3, size=(200, 6)).astype(np.float32))
    targets = np.tile([0, 1], 100)
    validation = np.arange(140, 200)
    config = TrainConfig(novelty_method=method, novelty_quantile=0.9)
    checks = fit_unknown_checks(config, model, data, targets, np.arange(140), validation, 1.3, torch.device("cpu"))
    bundle = ModelBundle.from_model(
        model, genes=data.genes, classes=["a", "b"], preprocessing=data.preprocessing, temperature=1.3,
        novelty=checks.novelty, min_detected_genes=checks.min_detected_genes,
    )
    save_bundle(bundle, tmp_path / "bundle")
    served = Predictor(load_bundle(tmp_path / "bundle"), device="cpu").annotate(data.X[validation], data.genes)
    assert checks.novelty.method == method
    assert checks.novelty.threshold == pytest.approx(np.quantile(served.novelty_score, 0.9), rel=1e-4, abs=1e-5)
