"""The structural check of sparse (CSR) input: the one function every reader calls before any kernel.

A CSR matrix is three arrays that must agree with each other and with the declared shape. scipy trusts
them (its constructors check lengths, not contents), and the compiled kernels behind ``toarray``,
products and column selection index memory by them: a column index past the last gene reads or writes
outside the buffer (a segmentation fault), row pointers that go backwards give wrong rows silently.
:func:`check_csr_structure` refuses every such matrix with a message that names the first fault and how
to fix it; h5ad uploads, ``celltype score``, training, CSR JSON and npz bodies all call it (directly
or through :mod:`model.h5ad`), so anything downstream may assume valid structure.

The check is one vectorised pass over ``indptr`` and ``indices`` (no copy of the values).
"""

from __future__ import annotations

import numpy as np

from model.errors import InputError

DEFAULT_FIX = "re-write it with anndata (adata.write_h5ad) or build it with scipy.sparse.csr_matrix"
"""How to fix a structurally broken matrix, unless the caller says better."""


class SparseStructureError(InputError):
    """A CSR matrix whose arrays do not agree: a corrupt file or a malformed request."""


def check_csr_structure(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    shape: tuple[int, int],
    *,
    what: str = "the CSR matrix",
    fix: str = DEFAULT_FIX,
    first_row: int = 0,
) -> None:
    """Raise :class:`SparseStructureError` unless ``(data, indices, indptr)`` is a valid CSR of ``shape``.

    Checked, in this order: the arrays are 1-D; ``indptr`` and ``indices`` hold integers and ``data``
    numbers; ``indptr`` has ``shape[0] + 1`` entries, starts at 0, never decreases and ends at the
    number of values; ``data`` and ``indices`` have that many entries; every index lies in
    ``[0, shape[1])``. Duplicated or unsorted indices within a row are allowed (scipy sums/sorts them).

    Args:
        indptr, indices, data: the CSR parts (``indptr`` rebased to 0 for a block of rows).
        shape: the declared ``(rows, columns)``.
        what: names the matrix in the message (``"X of cells.h5ad"``, ``"'csr'"``).
        fix: what the user should do, appended to the message.
        first_row: the first row's number in the whole matrix (for a block), so messages name file rows.
    """
    n_rows, n_columns = (int(n) for n in shape)

    def refuse(problem: str) -> SparseStructureError:
        return SparseStructureError(f"{what}: {problem}; the matrix is corrupt — {fix}")

    for name, array in (("indptr", indptr), ("indices", indices), ("data", data)):
        if np.ndim(array) != 1:
            raise refuse(f"its {name} array is {np.ndim(array)}-D, not 1-D")
    for name, array in (("indptr", indptr), ("indices", indices)):
        if array.dtype.kind not in "iu":
            raise refuse(f"its {name} array holds {array.dtype} values, not integers")
    if data.dtype.kind not in "biuf":
        raise refuse(f"its values (data) are of type {data.dtype}, not numbers")
    if n_rows < 0 or n_columns < 0:
        raise refuse(f"its declared shape {tuple(shape)} is negative")
    if indptr.shape[0] != n_rows + 1:
        raise refuse(f"it declares {n_rows} rows but has {indptr.shape[0]} row pointers (expected {n_rows + 1})")
    if int(indptr[0]) != 0:
        raise refuse(f"its row pointers start at {int(indptr[0])}; they must start with 0")
    steps = np.diff(indptr)
    if steps.size and int(steps.min()) < 0:
        raise refuse(f"its CSR row pointers decrease at row {first_row + int(np.argmax(steps < 0)) + 1}")
    nnz = int(indptr[-1])
    if indices.shape[0] != nnz or data.shape[0] != nnz:
        raise refuse(
            f"its row pointers end at {nnz} but it has {indices.shape[0]} column indices and "
            f"{data.shape[0]} values (all three must agree)"
        )
    if nnz:
        low, high = int(indices.min()), int(indices.max())
        if low < 0 or high >= n_columns:
            bad = int(np.argmax((indices < 0) | (indices >= n_columns)))
            row = first_row + int(np.searchsorted(indptr, bad, side="right")) - 1
            raise refuse(
                f"column index {int(indices[bad])} at row {row} is outside the {n_columns} genes "
                f"(valid: gene columns between 0 and {n_columns - 1})"
            )


def check_row_pointers(
    pointers: np.ndarray, n_values: int, *, what: str, fix: str = DEFAULT_FIX, first_row: int = 0
) -> None:
    """Check a slice of a CSR's row pointers before the values it points at are read.

    The slice (not rebased) must hold integers and its ends must lie within ``[0, n_values]``, the stored
    values, in order; the values between them can then be read safely, and :func:`check_csr_structure`
    checks the rebased block (every pointer, once). Reading row blocks this way never asks for values
    outside the stored arrays.
    """
    if pointers.dtype.kind not in "iu":
        raise SparseStructureError(
            f"{what}: its row pointers hold {pointers.dtype} values, not integers; the matrix is corrupt — {fix}"
        )
    if pointers.size and int(pointers[-1]) < int(pointers[0]):
        steps = np.diff(pointers)
        row = first_row + int(np.argmax(steps < 0)) + 1
        raise SparseStructureError(
            f"{what}: its CSR row pointers decrease at row {row}; the matrix is corrupt — {fix}"
        )
    if pointers.size and (int(pointers[0]) < 0 or int(pointers[-1]) > n_values):
        raise SparseStructureError(
            f"{what}: its row pointers for rows {first_row}..{first_row + pointers.size - 2} reach "
            f"{int(pointers[0])}..{int(pointers[-1])}, outside the {n_values} stored values; "
            f"the matrix is corrupt — {fix}"
        )
