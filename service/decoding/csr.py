"""A CSR matrix from the three arrays a client sent, with every invariant checked."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from service.errors import RequestInputError


def check_csr(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, n_genes: int, field: str) -> sp.csr_matrix:
    """A validated CSR matrix from its parts, or :class:`RequestInputError` saying which invariant is broken."""
    if indptr.size == 0 or indptr[0] != 0:
        raise RequestInputError(f"'{field}.indptr' must start with 0 and have one entry per cell plus one")
    if np.any(np.diff(indptr) < 0):
        raise RequestInputError(f"'{field}.indptr' must be non-decreasing")
    if not (indptr[-1] == indices.size == data.size):
        raise RequestInputError(
            f"'{field}': indptr ends at {int(indptr[-1])} but there are {indices.size} indices and "
            f"{data.size} values; all three must agree"
        )
    if not np.all(np.equal(np.mod(indptr, 1), 0)) or not np.all(np.equal(np.mod(indices, 1), 0)):
        raise RequestInputError(f"'{field}.indptr' and '{field}.indices' must be integers")
    if indices.size and (indices.min() < 0 or indices.max() >= n_genes):
        raise RequestInputError(f"'{field}.indices' must be gene columns between 0 and {n_genes - 1}")
    matrix = sp.csr_matrix(
        (data.astype(np.float32), indices.astype(np.int64), indptr.astype(np.int64)),
        shape=(indptr.size - 1, n_genes),
    )
    if not matrix.has_canonical_format:
        canonical = matrix.copy()
        canonical.sum_duplicates()
        if canonical.nnz != matrix.nnz:
            raise RequestInputError(f"'{field}' names the same gene more than once for a cell; send each value once")
        matrix = canonical
    return matrix

