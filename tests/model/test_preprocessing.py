"""Tests for the preprocessing contract: input-kind checks and the shared normalization."""

import numpy as np
import pytest
import scipy.sparse as sp

from model.errors import InputError, InputKindError
from model.preprocessing import (
    Preprocessing,
    as_matrix,
    check_values,
    detect_input_kind,
    log_normalize_sparse,
    to_model_input,
)

COUNTS = np.array([[0, 3, 1, 6], [2, 0, 0, 8], [5, 5, 0, 0]], dtype=np.float32)


def lognorm(counts: np.ndarray) -> np.ndarray:
    return np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4).astype(np.float32)


@pytest.mark.parametrize("to_sparse", [False, True])
def test_detects_counts_and_lognorm(to_sparse):
    wrap = sp.csr_matrix if to_sparse else np.asarray
    assert detect_input_kind(wrap(COUNTS)) == "counts"
    assert detect_input_kind(wrap(lognorm(COUNTS))) == "lognorm"


def test_to_model_input_matches_formula_and_keeps_zero_rows():
    values = np.vstack([COUNTS, np.zeros((1, 4), dtype=np.float32)])
    out = to_model_input(values.copy(), "counts", 1e4)
    np.testing.assert_allclose(out[:3], lognorm(COUNTS), rtol=1e-6)
    assert np.all(out[3] == 0)
    same = lognorm(COUNTS)
    assert to_model_input(same, "lognorm", 1e4) is same


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sparse_normalization_is_the_dense_one_without_densifying(dtype):
    counts = sp.csr_matrix(np.vstack([COUNTS, np.zeros((1, 4), dtype=np.float32)]))
    before = counts.copy()
    out = log_normalize_sparse(counts, 1e4, dtype)
    assert sp.isspmatrix_csr(out) and out.dtype == dtype
    np.testing.assert_array_equal(out.indices, counts.indices)  # same sparsity pattern, zero row kept
    np.testing.assert_array_equal(out.indptr, counts.indptr)
    dense = to_model_input(counts.toarray().astype(dtype), "counts", 1e4)
    np.testing.assert_array_equal(out.toarray(), dense)
    assert (counts != before).nnz == 0  # the input is left alone


def test_the_target_sum_default_is_the_preprocessing_one():
    assert Preprocessing().target_sum == 1e4
    assert Preprocessing(target_sum=50.0).to_dict()["target_sum"] == 50.0


@pytest.mark.parametrize(
    ("values", "kind", "message"),
    [
        ([[1.0, np.nan]], "counts", "NaN or infinite"),
        ([[1.0, np.inf]], "lognorm", "NaN or infinite"),
        ([[1.0, -2.0]], "counts", "negative values"),
        ([[0.5, 1.7]], "counts", "look log-normalized"),
        ([[0.5, 100.5]], "counts", r"send raw \(integer\)"),
        ([[40.0, 1.5]], "lognorm", "more than log1p"),
    ],
)
def test_check_values_refuses_with_a_reason(values, kind, message):
    with pytest.raises(InputKindError, match=message):
        check_values(as_matrix(values), kind)


def test_counts_sent_as_lognorm_are_refused(seed):
    counts = np.random.default_rng(seed).poisson(2.0, size=(20, 10)).astype(np.float32)
    with pytest.raises(InputKindError, match="looks like raw counts"):
        check_values(counts, "lognorm")


def test_error_locates_the_bad_cell_in_sparse_input():
    matrix = sp.csr_matrix(np.array([[1, 0, 2], [0, 0, 0], [0, -1, 0]], dtype=np.float32))
    with pytest.raises(InputKindError, match="cell 2, gene column 1"):
        check_values(matrix, "counts")


def test_as_matrix_rejects_ragged_and_non_2d():
    with pytest.raises(InputError, match="rectangular"):
        as_matrix([[1, 2], [3]])
    with pytest.raises(InputError, match="2-D"):
        as_matrix([1, 2, 3])


def test_preprocessing_round_trip_and_validation():
    spec = Preprocessing(input_kind="lognorm", target_sum=1e6)
    assert Preprocessing.from_dict(spec.to_dict()) == spec
    with pytest.raises(InputError):
        Preprocessing(input_kind="zscore")
    with pytest.raises(ValueError, match="target_sum"):
        Preprocessing(target_sum=0)
