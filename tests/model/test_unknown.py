"""The reasons a cell is "Unknown", and the Unknown checks' place in the bundle."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from model.bundle import MANIFEST_FILE, UNKNOWN_LABEL, WEIGHTS_FILE, load_bundle, save_bundle
from model.errors import BundleError
from model.novelty import LOW_CONFIDENCE, NO_COUNTS, TOO_FEW_GENES, UNKNOWN_REASONS, UNLIKE_TRAINING
from model.predict import Predictor
from tests.factories import GENES, add_unknown_checks, random_counts

from .conftest import make_bundle

MIN_GENES = 5


@pytest.fixture
def checked_bundle(seed):
    """The test bundle with a Mahalanobis novelty detector and ``min_detected_genes = 5``."""
    return add_unknown_checks(
        make_bundle(seed=seed), random_counts(600, seed=seed + 3), min_detected_genes=MIN_GENES, method="mahalanobis"
    )


@pytest.fixture
def predictor(checked_bundle) -> Predictor:
    return Predictor(checked_bundle, device="cpu")


def degenerate_cells() -> np.ndarray:
    """Rows: no counts; one detected gene; four detected genes; far from training (10,000 on half the genes)."""
    cells = np.zeros((4, len(GENES)), dtype=np.float32)
    cells[1, 3] = 7
    cells[2, :MIN_GENES - 1] = 3
    cells[3, : len(GENES) // 2] = 10_000
    return cells


def test_each_reason_is_reported_in_order(predictor):
    annotation = predictor.annotate(degenerate_cells(), threshold=0.0)
    assert annotation.unknown_reason.tolist() == [NO_COUNTS, TOO_FEW_GENES, TOO_FEW_GENES, UNLIKE_TRAINING]
    assert annotation.novelty_score[3] > predictor.bundle.novelty.threshold
    assert (annotation.labels == UNKNOWN_LABEL).all()


def test_a_borderline_cell_is_low_confidence_just_below_the_threshold(predictor, seed):
    cells = random_counts(40, seed=seed + 11)
    typical = predictor.annotate(cells, threshold=0.0)
    cell = cells[np.flatnonzero(typical.unknown_reason == "")[:1]]
    confidence = float(predictor.annotate(cell, threshold=0.0).confidence[0])
    above = predictor.annotate(cell, threshold=confidence)
    below = predictor.annotate(cell, threshold=float(np.nextafter(np.float32(confidence), np.float32(1))))
    assert above.unknown_reason.tolist() == [""] and above.labels[0] != UNKNOWN_LABEL
    assert below.unknown_reason.tolist() == [LOW_CONFIDENCE] and below.labels[0] == UNKNOWN_LABEL


def test_typed_cells_have_no_reason_and_reasons_are_known_values(predictor, seed):
    annotation = predictor.annotate(random_counts(200, seed=seed + 5), threshold=0.0)
    assert set(annotation.unknown_reason.tolist()) <= set(UNKNOWN_REASONS)
    typed = annotation.unknown_reason == ""
    assert typed.mean() > 0.9
    assert (annotation.labels[typed] != UNKNOWN_LABEL).all() and (annotation.labels[~typed] == UNKNOWN_LABEL).all()


def test_each_cell_is_answered_alone(predictor, seed):
    cells = np.vstack([degenerate_cells(), random_counts(30, seed=seed + 7)])
    batch = predictor.annotate(cells)
    for index in range(len(cells)):
        alone = predictor.annotate(cells[index : index + 1])
        assert alone.unknown_reason[0] == batch.unknown_reason[index]
        assert alone.labels[0] == batch.labels[index]
        np.testing.assert_allclose(alone.novelty_score[0], batch.novelty_score[index], rtol=1e-4, atol=1e-4)


def test_without_checks_only_empty_cells_are_refused(seed):
    predictor = Predictor(make_bundle(seed=seed), device="cpu")
    annotation = predictor.annotate(degenerate_cells(), threshold=0.0)
    assert annotation.unknown_reason.tolist() == [NO_COUNTS, "", "", ""]
    assert np.isnan(annotation.novelty_score).all()


def test_bundle_round_trip_keeps_the_checks(tmp_path, checked_bundle):
    save_bundle(checked_bundle, tmp_path / "bundle")
    loaded = load_bundle(tmp_path / "bundle", expected_sha256=checked_bundle.sha256)
    assert loaded.min_detected_genes == MIN_GENES
    assert loaded.novelty.method == "mahalanobis" and loaded.novelty.threshold == checked_bundle.novelty.threshold
    assert loaded.state_dict.keys() == checked_bundle.state_dict.keys()
    cells = np.vstack([degenerate_cells(), random_counts(20, seed=4)])
    before, after = (Predictor(b, device="cpu").annotate(cells) for b in (checked_bundle, loaded))
    np.testing.assert_array_equal(after.unknown_reason, before.unknown_reason)
    np.testing.assert_allclose(after.novelty_score, before.novelty_score, rtol=1e-6)
    manifest = json.loads((tmp_path / "bundle" / MANIFEST_FILE).read_text())
    assert manifest["novelty"]["method"] == "mahalanobis" and manifest["min_detected_genes"] == MIN_GENES


def test_bundle_round_trip_without_checks(tmp_path, seed):
    bundle = make_bundle(seed=seed)
    save_bundle(bundle, tmp_path / "bundle")
    manifest = json.loads((tmp_path / "bundle" / MANIFEST_FILE).read_text())
    assert manifest["novelty"] is None and manifest["min_detected_genes"] == 1
    loaded = load_bundle(tmp_path / "bundle")
    assert loaded.novelty is None and loaded.min_detected_genes == 1


def test_a_bundle_from_before_the_checks_loads_without_them(tmp_path, checked_bundle):
    save_bundle(checked_bundle, tmp_path / "bundle")
    manifest_path = tmp_path / "bundle" / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    del manifest["novelty"], manifest["min_detected_genes"]
    manifest_path.write_text(json.dumps(manifest))
    loaded = load_bundle(tmp_path / "bundle")
    assert loaded.novelty is None and loaded.min_detected_genes == 1


def test_the_digest_covers_the_novelty_arrays(tmp_path, checked_bundle):
    save_bundle(checked_bundle, tmp_path / "bundle")
    weights = tmp_path / "bundle" / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF  # the last tensors in the file are the detector's (keys sort after the classifier's)
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum"):
        load_bundle(tmp_path / "bundle")


def test_bad_min_detected_genes_is_refused(checked_bundle):
    for value in (0, len(GENES) + 1, 2.5):
        with pytest.raises(BundleError, match="min_detected_genes"):
            replace(checked_bundle, min_detected_genes=value)
