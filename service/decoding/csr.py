"""A CSR matrix from the three arrays a client sent, with every invariant checked."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from model.sparse import check_csr_structure
from service.errors import RequestInputError

REQUEST_FIX = (
    "send indptr with one entry per cell plus one (from 0, never decreasing, ending at the number of values), "
    "and indices (gene columns) and data of that length"
)
"""How a client fixes a malformed CSR body."""


def check_csr(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, n_genes: int, field: str) -> sp.csr_matrix:
    """A validated float32 CSR matrix from its parts.

    The structure is checked by :func:`model.sparse.check_csr_structure` (which raises
    :class:`~model.sparse.SparseStructureError`, a 422); JSON numbers are accepted as indices only when
    they are whole. A gene named twice for one cell is refused.
    """
    integer_parts = {}
    for name, part in (("indptr", indptr), ("indices", indices)):
        if part.dtype.kind == "f":
            if not np.all(np.isfinite(part)) or not np.all(np.equal(np.mod(part, 1), 0)):
                raise RequestInputError(f"'{field}.indptr' and '{field}.indices' must be integers")
            part = part.astype(np.int64)
        integer_parts[name] = part
    n_cells = max(indptr.size - 1, 0)
    check_csr_structure(
        integer_parts["indptr"], integer_parts["indices"], data, (n_cells, n_genes), what=f"'{field}'", fix=REQUEST_FIX
    )
    matrix = sp.csr_matrix(
        (data.astype(np.float32), integer_parts["indices"].astype(np.int64), integer_parts["indptr"].astype(np.int64)),
        shape=(n_cells, n_genes),
    )
    if not matrix.has_canonical_format:
        canonical = matrix.copy()
        canonical.sum_duplicates()
        if canonical.nnz != matrix.nnz:
            raise RequestInputError(f"'{field}' names the same gene more than once for a cell; send each value once")
        matrix = canonical
    return matrix
