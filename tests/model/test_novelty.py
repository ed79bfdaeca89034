"""Novelty scorers and the detector: known geometry, thresholds, storage round trip, reasons."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from model.novelty import (
    HIDDEN,
    INPUT,
    LOGITS,
    LOW_CONFIDENCE,
    METHODS,
    UNLIKE_TRAINING,
    KnnScorer,
    MahalanobisScorer,
    NoveltyDetector,
    energy_score,
    ledoit_wolf_covariance,
    max_softmax_score,
    principal_components,
    unknown_reasons,
)


def clusters(rng: np.random.Generator, centres: np.ndarray, n: int, spread: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points around each centre, with their centre index."""
    labels = np.repeat(np.arange(len(centres)), n)
    return centres[labels] + spread * rng.standard_normal((len(labels), centres.shape[1])), labels


@pytest.fixture
def known_and_novel() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Training and validation features of three known clusters, and cells of a fourth, unseen one."""
    rng = np.random.default_rng(0)
    centres = np.zeros((4, 8))
    for c in range(4):
        centres[c, c] = 4.0
    train, labels = clusters(rng, centres[:3], 100)
    validation, _ = clusters(rng, centres[:3], 40)
    novel, _ = clusters(rng, centres[3:], 60)
    return train, labels, validation, novel


def test_energy_and_max_softmax_match_their_definitions() -> None:
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    expected_energy = -np.log(np.exp(logits).sum(axis=1))
    np.testing.assert_allclose(energy_score(logits), expected_energy)
    np.testing.assert_allclose(energy_score(logits, 2.0), -2.0 * np.log(np.exp(logits / 2.0).sum(axis=1)))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(max_softmax_score(logits), 1.0 - probabilities.max(axis=1))
    assert max_softmax_score(np.array([[1000.0, 0.0]]))[0] == pytest.approx(0.0)  # no overflow


def test_ledoit_wolf_matches_scikit_learn() -> None:
    sklearn_covariance = pytest.importorskip("sklearn.covariance")
    x = np.random.default_rng(1).standard_normal((30, 12)) @ np.diag(np.linspace(0.1, 3, 12))
    x -= x.mean(axis=0)
    covariance, shrinkage = ledoit_wolf_covariance(x)
    reference = sklearn_covariance.LedoitWolf(assume_centered=True).fit(x)
    assert shrinkage == pytest.approx(reference.shrinkage_)
    np.testing.assert_allclose(covariance, reference.covariance_, rtol=1e-10)


def test_mahalanobis_is_the_distance_to_the_nearest_class_mean() -> None:
    scorer = MahalanobisScorer(means=np.array([[0.0, 0.0], [10.0, 0.0]]), precision=np.diag([1.0, 4.0]))
    scores = scorer.score(np.array([[1.0, 1.0], [9.0, 0.0]]))
    np.testing.assert_allclose(scores, [1.0 + 4.0, 1.0])


def test_mahalanobis_ignores_classes_without_training_cells() -> None:
    x = np.array([[0.0, 0.0], [0.2, 0.1], [-0.1, 0.3], [5.0, 5.0], [5.2, 4.9], [4.8, 5.1]])
    scorer = MahalanobisScorer.fit(x, np.array([0, 0, 0, 2, 2, 2]), n_classes=3)
    assert np.isnan(scorer.means[1]).all()
    assert np.isfinite(scorer.score(np.array([[1.0, 1.0]]))).all()


@pytest.mark.parametrize("method", ["mahalanobis", "relative_mahalanobis", "knn"])
def test_distance_scorers_flag_an_unseen_cluster(method, known_and_novel) -> None:
    train, labels, validation, novel = known_and_novel
    detector = NoveltyDetector.fit(method, train, labels, 3)
    threshold = detector.calibrate(validation, quantile=0.95)
    assert threshold == pytest.approx(np.quantile(detector.score(validation), 0.95))
    assert detector.is_novel(validation).mean() == pytest.approx(0.05, abs=0.01)
    assert detector.is_novel(novel).mean() > 0.95


def test_threshold_depends_on_the_quantile(known_and_novel) -> None:
    train, labels, validation, _ = known_and_novel
    detector = NoveltyDetector.fit("mahalanobis", train, labels, 3)
    assert detector.calibrate(validation, 0.5) < detector.calibrate(validation, 0.99)
    assert detector.quantile == 0.99


def test_uncalibrated_detector_flags_nothing(known_and_novel) -> None:
    train, labels, _, novel = known_and_novel
    assert not NoveltyDetector.fit("mahalanobis", train, labels, 3).is_novel(novel).any()


def test_a_cells_score_does_not_depend_on_the_other_cells(known_and_novel) -> None:
    train, labels, validation, novel = known_and_novel
    for method in ("mahalanobis", "knn"):
        detector = NoveltyDetector.fit(method, train, labels, 3)
        together = detector.score(np.vstack([validation, novel]))
        alone = np.array([detector.score(row[None, :])[0] for row in novel[:5]])
        np.testing.assert_allclose(together[len(validation) : len(validation) + 5], alone, rtol=1e-9)


def as_mapping(features: np.ndarray) -> dict[str, np.ndarray]:
    """Stand-ins for :func:`model.novelty.novelty_features`: the input, hidden features and 3 logits."""
    return {INPUT: features, HIDDEN: 2.0 * features[:, ::-1], LOGITS: features[:, :3]}


@pytest.mark.parametrize("method", METHODS)
def test_state_round_trip_through_json_gives_the_same_scores(method, known_and_novel) -> None:
    train, labels, validation, novel = known_and_novel
    params = {"temperature": 0.7} if method in ("energy", "max_softmax") else {}
    params |= {"n_components": 4} if method == "input_pca" else {}
    detector = NoveltyDetector.fit(method, as_mapping(train), labels, 3, **params)
    detector.calibrate(as_mapping(validation), 0.9)
    metadata, arrays = detector.to_state()
    assert all(a.dtype == np.float32 for a in arrays.values())
    restored = NoveltyDetector.from_state(json.loads(json.dumps(metadata)), arrays)
    assert (restored.method, restored.input, restored.quantile) == (detector.method, detector.input, 0.9)
    assert restored.threshold == pytest.approx(detector.threshold)
    probe = as_mapping(novel)
    np.testing.assert_allclose(restored.score(probe), detector.score(probe), rtol=1e-4, atol=1e-4)


def test_input_pca_flags_an_unseen_cluster_in_input_space(known_and_novel) -> None:
    train, labels, validation, novel = known_and_novel
    detector = NoveltyDetector.fit("input_pca", as_mapping(train), labels, 3, n_components=5)
    assert detector.input == INPUT
    detector.calibrate(as_mapping(validation), quantile=0.95)
    assert detector.is_novel(validation).mean() == pytest.approx(0.05, abs=0.01)
    assert detector.is_novel(as_mapping(novel)).mean() > 0.95
    together = detector.score(np.vstack([validation, novel]))
    alone = np.array([detector.score(row[None, :])[0] for row in novel[:5]])
    np.testing.assert_allclose(together[len(validation) : len(validation) + 5], alone, rtol=1e-9)


def test_input_pca_keeps_the_top_principal_axes() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((400, 6)) * np.array([5.0, 3.0, 1.0, 0.1, 0.1, 0.1])
    center, axes = principal_components(x, 2)
    np.testing.assert_allclose(center, x.mean(axis=0))
    np.testing.assert_allclose(np.abs(axes), np.eye(6)[:, :2], atol=0.05)
    assert principal_components(x, 50)[1].shape == (6, 6)


@pytest.fixture
def small_model_and_cells():
    """A random 12-gene, 3-class classifier in eval mode and 7 cells of inputs."""
    torch = pytest.importorskip("torch")
    from model.classifier import CellTypeClassifier, ClassifierConfig

    torch.manual_seed(0)
    model = CellTypeClassifier(ClassifierConfig(n_genes=12, n_classes=3, hidden_sizes=(8, 5))).eval()
    return model, torch.rand(7, 12)


def test_novelty_features_are_one_forward_pass(small_model_and_cells) -> None:
    import torch

    from model.novelty import hidden_features, novelty_features

    model, x = small_model_and_cells
    features = novelty_features(model, x)
    torch.testing.assert_close(features[INPUT], model.standardize(x))
    torch.testing.assert_close(features[HIDDEN], hidden_features(model, x))
    torch.testing.assert_close(features[LOGITS], model(x))
    for method in METHODS:  # every detector takes the mapping (tensors included) and picks its own input
        params = {"temperature": 1.0} if method in ("energy", "max_softmax") else {}
        params |= {"n_components": 3} if method == "input_pca" else {}
        params |= {"k": 3} if method == "knn" else {}
        detector = NoveltyDetector.fit(method, features, np.arange(7) % 3, 3, **params)
        detector.calibrate(features, 0.9)
        assert detector.score(features).shape == (7,)


def test_missing_features_and_foreign_options_are_clear_errors(known_and_novel) -> None:
    train, labels, _, _ = known_and_novel
    detector = NoveltyDetector.fit("input_pca", as_mapping(train), labels, 3)
    with pytest.raises(ValueError, match="lack 'input'"):
        detector.score({HIDDEN: train})
    with pytest.raises(ValueError, match="takes no option 'k'"):
        NoveltyDetector.fit("mahalanobis", train, labels, 3, k=3)


def test_uncalibrated_state_keeps_an_infinite_threshold(known_and_novel) -> None:
    train, labels, _, _ = known_and_novel
    metadata, arrays = NoveltyDetector.fit("mahalanobis", train, labels, 3).to_state()
    assert metadata["threshold"] is None
    assert math.isinf(NoveltyDetector.from_state(metadata, arrays).threshold)


def test_knn_keeps_a_stratified_sample_of_references() -> None:
    rng = np.random.default_rng(2)
    x, labels = clusters(rng, np.eye(3) * 3, 200)
    scorer = KnnScorer.fit(x, labels, 3, k=5, max_reference=90)
    assert scorer.reference.shape == (90, 3)
    np.testing.assert_allclose(np.linalg.norm(scorer.reference, axis=1), 1.0)


def test_bad_input_is_a_clear_error(known_and_novel) -> None:
    train, labels, _, _ = known_and_novel
    with pytest.raises(ValueError, match="unknown novelty method"):
        NoveltyDetector.fit("isolation_forest", train, labels, 3)
    detector = NoveltyDetector.fit("mahalanobis", train, labels, 3)
    with pytest.raises(ValueError, match="fitted on 8"):
        detector.score(train[:, :4])
    with pytest.raises(ValueError, match="NaN"):
        detector.score(np.full((1, 8), np.nan))
    with pytest.raises(ValueError, match="quantile"):
        detector.calibrate(train, 1.0)
    with pytest.raises(ValueError, match="class indices"):
        MahalanobisScorer.fit(train, labels + 1, 3)
    with pytest.raises(ValueError, match="missing its array 'precision'"):
        NoveltyDetector.from_state({"method": "mahalanobis"}, {"means": np.zeros((3, 8))})


def test_unknown_reasons() -> None:
    reasons = unknown_reasons(np.array([0.9, 0.3, 0.3, 0.9]), 0.5, np.array([False, False, True, True]))
    assert reasons.tolist() == ["", LOW_CONFIDENCE, UNLIKE_TRAINING, UNLIKE_TRAINING]
    assert unknown_reasons(np.array([0.9, 0.3]), 0.5, None).tolist() == ["", LOW_CONFIDENCE]
    with pytest.raises(ValueError, match="shape"):
        unknown_reasons(np.array([0.9, 0.3]), 0.5, np.array([True]))


def test_hidden_features_are_the_last_blocks_pre_activation(small_model_and_cells) -> None:
    import torch

    from model.novelty import hidden_features

    model, x = small_model_and_cells
    features = hidden_features(model, x)
    assert features.shape == (7, 5)
    assert (features < 0).any()  # before the ReLU
    torch.testing.assert_close(torch.relu(features), model.embed(x))
