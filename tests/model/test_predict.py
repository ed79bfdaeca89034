"""Tests for Predictor: alignment, input kinds, chunking, invariance, thresholds."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from model.bundle import UNKNOWN_LABEL
from model.errors import GeneMismatchError, InputError, InputKindError
from model.predict import Predictor, resolve_device
from model.preprocessing import to_model_input

from .conftest import CLASSES, GENES


@pytest.fixture
def predictor(bundle_dir) -> Predictor:
    return Predictor.load(bundle_dir, device="cpu")


def reference_proba(predictor: Predictor, counts: np.ndarray) -> np.ndarray:
    """Probabilities computed straight from the formulas, outside Predictor."""
    model_input = torch.from_numpy(to_model_input(counts.copy(), "counts", 1e4))
    with torch.no_grad():
        logits = predictor.bundle.build_model()(model_input)
    return torch.softmax(logits / predictor.bundle.temperature, dim=1).numpy()


def test_properties(predictor):
    assert predictor.genes == GENES and predictor.classes == CLASSES and predictor.threshold == 0.4
    description = predictor.describe()
    assert description["n_genes"] == len(GENES) and description["labels"] == CLASSES


def test_probabilities_match_the_formulas(predictor, counts):
    proba = predictor.predict_proba(counts, GENES)
    np.testing.assert_allclose(proba, reference_proba(predictor, counts), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)


def test_each_cell_is_independent_of_the_rest_of_the_batch(predictor, counts, seed):
    full = predictor.predict_proba(counts, GENES)
    alone = np.vstack([predictor.predict_proba(counts[i : i + 1], GENES) for i in range(len(counts))])
    np.testing.assert_allclose(alone, full, atol=1e-6)
    order = np.random.default_rng(seed).permutation(len(counts))
    np.testing.assert_allclose(predictor.predict_proba(counts[order], GENES), full[order], atol=1e-6)


def test_sparse_dense_chunked_and_shuffled_genes_agree(bundle_dir, counts, seed):
    expected = Predictor.load(bundle_dir, device="cpu").predict_proba(counts, GENES)
    small_chunks = Predictor.load(bundle_dir, device="cpu", chunk_size=7)
    np.testing.assert_allclose(small_chunks.predict_proba(sp.csr_matrix(counts), GENES), expected, atol=1e-6)
    order = np.random.default_rng(seed).permutation(len(GENES))
    shuffled = small_chunks.predict_proba(counts[:, order], [GENES[i] for i in order])
    np.testing.assert_allclose(shuffled, expected, atol=1e-6)


def test_extra_genes_do_not_change_the_answer(predictor, counts, seed):
    extra = np.random.default_rng(seed).poisson(50, size=(len(counts), 5)).astype(np.float32)
    wider = np.hstack([extra, counts])
    np.testing.assert_allclose(
        predictor.predict_proba(wider, [f"X{i}" for i in range(5)] + GENES),
        predictor.predict_proba(counts, GENES),
        atol=1e-6,
    )


def test_lognorm_input_gives_the_same_answer(predictor, counts):
    lognorm = to_model_input(counts.copy(), "counts", 1e4)
    np.testing.assert_allclose(
        predictor.predict_proba(lognorm, GENES, input_kind="lognorm"), predictor.predict_proba(counts, GENES), atol=1e-6
    )


def test_missing_genes_are_filled_with_zeros(predictor, counts):
    kept = GENES[:30]
    annotation = predictor.annotate(counts[:, :30], kept)
    assert annotation.alignment.n_matched == 30 and len(annotation.alignment.missing) == 10
    padded = np.hstack([counts[:, :30], np.zeros((len(counts), 10), dtype=np.float32)])
    np.testing.assert_allclose(annotation.probabilities, predictor.predict_proba(padded, GENES), atol=1e-6)


def test_threshold_yields_unknown(predictor, counts):
    annotation = predictor.annotate(counts, GENES, threshold=1.0)
    assert set(annotation.labels) == {UNKNOWN_LABEL}
    labels = predictor.predict(counts, GENES, threshold=0.0)
    assert set(labels) <= set(CLASSES)
    best = np.asarray(CLASSES)[predictor.predict_proba(counts, GENES).argmax(axis=1)]
    assert list(labels) == list(best)


def test_bad_inputs_are_input_errors(predictor, counts):
    with pytest.raises(InputError, match="40 gene names"):
        predictor.predict(counts[:, :39], GENES)
    with pytest.raises(InputKindError, match="non-integer"):
        predictor.predict(counts + 0.5, GENES)
    with pytest.raises(GeneMismatchError):
        predictor.predict(counts, [g.lower() + "x" for g in GENES])
    with pytest.raises(InputError, match="threshold"):
        predictor.predict(counts, GENES, threshold=1.5)
    with pytest.raises(InputError, match="input kind"):
        predictor.predict(counts, GENES, input_kind="tpm")


def test_empty_input_gives_empty_output(predictor):
    annotation = predictor.annotate(np.zeros((0, len(GENES)), dtype=np.float32), GENES)
    assert annotation.probabilities.shape == (0, len(CLASSES)) and len(annotation.labels) == 0


def test_cuda_request_without_gpu_is_clear():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(InputError, match="no CUDA GPU"):
        resolve_device("cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(bundle_dir, counts):
    cpu = Predictor.load(bundle_dir, device="cpu").predict_proba(counts, GENES)
    gpu = Predictor.load(bundle_dir, device="cuda").predict_proba(counts, GENES)
    np.testing.assert_allclose(gpu, cpu, atol=1e-5)
