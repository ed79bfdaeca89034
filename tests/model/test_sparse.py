"""The structural check of CSR input: every fault refused with a message naming it, valid input passes."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from model.sparse import SparseStructureError, check_csr_structure, check_row_pointers


def parts(n_cells: int = 6, n_genes: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    matrix = sp.random(n_cells, n_genes, density=0.5, format="csr", random_state=0, dtype=np.float32)
    return matrix.indptr.copy(), matrix.indices.copy(), matrix.data.copy()


def test_a_valid_matrix_and_an_empty_one_pass() -> None:
    indptr, indices, data = parts()
    check_csr_structure(indptr, indices, data, (6, 5))
    check_csr_structure(np.zeros(1, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32), (0, 5))


@pytest.mark.parametrize(
    ("break_it", "fragment"),
    [
        (lambda p, i, d: (p, i.astype(float), d), "indices array holds float64"),
        (lambda p, i, d: (p, i, d.astype(str)), "not numbers"),
        (lambda p, i, d: (p[:-1], i, d), "has 6 row pointers (expected 7)"),
        (lambda p, i, d: (p + 1, i, d), "must start with 0"),
        (lambda p, i, d: (np.r_[p[:3], p[2] - 1, p[4:]], i, d), "decrease at row 3"),
        (lambda p, i, d: (p, i, d[:-1]), "all three must agree"),
        (lambda p, i, d: (p, np.r_[i[:-1], 5], d), "column index 5 at row 5 is outside the 5 genes"),
        (lambda p, i, d: (p, np.r_[-1, i[1:]], d), "column index -1 at row 0"),
        (lambda p, i, d: (p, i.reshape(-1, 1), d), "indices array is 2-D"),
    ],
)
def test_each_fault_is_refused_with_what_and_how_to_fix(break_it, fragment) -> None:
    indptr, indices, data = break_it(*parts())
    with pytest.raises(SparseStructureError, match="the matrix is corrupt") as caught:
        check_csr_structure(indptr, indices, data, (6, 5), what="X of cells.h5ad")
    assert fragment in str(caught.value) and str(caught.value).startswith("X of cells.h5ad: ")


def test_rows_are_numbered_from_the_first_row_of_a_block() -> None:
    indptr, indices, data = parts()
    indices[-1] = 9
    with pytest.raises(SparseStructureError, match="at row 105 "):
        check_csr_structure(indptr, indices, data, (6, 5), first_row=100)


def test_row_pointer_slices_are_checked_against_the_stored_values() -> None:
    check_row_pointers(np.array([3, 4, 9]), 9, what="X")
    with pytest.raises(SparseStructureError, match="outside the 9 stored values"):
        check_row_pointers(np.array([3, 4, 10]), 9, what="X")
    with pytest.raises(SparseStructureError, match="decrease at row 12"):
        check_row_pointers(np.array([5, 6, 4]), 9, what="X", first_row=10)
    with pytest.raises(SparseStructureError, match="not integers"):
        check_row_pointers(np.array([0.0, 1.0]), 9, what="X")
