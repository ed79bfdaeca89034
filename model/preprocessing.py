"""The preprocessing contract: what a model expects as input and how raw values become its input.

A model is trained on ``log1p(x / total * target_sum)`` of each cell, where ``total`` is the cell's sum
over the model's own genes: the answer for a cell then never depends on which extra genes a client
happens to send. This module is the one place that normalization is written: :func:`to_model_input`
(dense, in place: training's mini-batches and every prediction) and :func:`log_normalize_sparse` (CSR
in, CSR out: gene selection and synthetic log-normalized data), both scaled by :func:`per_cell_scale`;
the target sum's default is :class:`Preprocessing`'s, the object saved in every bundle. Clients send either raw counts (``input_kind="counts"``, the default; the model does
the rest) or values that are already log-normalized that way (``"lognorm"``). The values are checked
against the declared kind, so that log data sent as counts (or the reverse) is refused with a message
that says what to send instead, never silently mis-scaled.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from model.errors import InputError, InputKindError

INPUT_KINDS = ("counts", "lognorm")
"""The input kinds a model accepts: raw counts, or log1p of counts scaled to ``target_sum`` per cell."""

LOGNORM_MAX = 30.0
"""Log-normalized values above this cannot come from ``log1p`` of per-cell scaled counts (not even log2 of CPM)."""

_INTEGER_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Preprocessing:
    """How a model turns a request's values into its input.

    Args:
        input_kind: the kind of values the model was trained from (``"counts"`` or ``"lognorm"``).
            Clients may send either kind whatever this is; it documents the training data.
        target_sum: per-cell total that counts are scaled to before ``log1p`` (1e4: "CP10k").
    """

    input_kind: str = "counts"
    target_sum: float = 1e4

    def __post_init__(self) -> None:
        check_input_kind(self.input_kind)
        if not self.target_sum > 0:
            raise ValueError(f"target_sum must be positive, got {self.target_sum}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description, as stored in a bundle's manifest."""
        return asdict(self) | {"transform": "log1p(counts / total_over_model_genes * target_sum)"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """Rebuild from :meth:`to_dict` output (unknown keys are ignored)."""
        return cls(input_kind=data["input_kind"], target_sum=float(data["target_sum"]))


def check_input_kind(input_kind: str) -> str:
    """Return ``input_kind`` if it is one of :data:`INPUT_KINDS`, else raise :class:`InputError`."""
    if input_kind not in INPUT_KINDS:
        raise InputError(f"input kind must be one of {', '.join(INPUT_KINDS)}; got {input_kind!r}")
    return input_kind


def as_matrix(X: Any) -> np.ndarray | sp.csr_matrix:
    """Return ``X`` as a 2-D float32 ndarray or CSR matrix, or raise :class:`InputError` if it is not one."""
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        if X.dtype != np.float32:
            X = X.astype(np.float32)
        return X
    try:
        arr = np.asarray(X, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InputError(f"expression values must be a rectangular table of numbers: {exc}") from None
    if arr.ndim == 1 and arr.size == 0:
        arr = arr.reshape(0, 0)
    if arr.ndim != 2:
        raise InputError(f"expression values must be 2-D (cells x genes); got {arr.ndim}-D")
    return arr


def _values(X: np.ndarray | sp.csr_matrix) -> np.ndarray:
    """The stored values of ``X`` (the non-zeros of a sparse matrix, every value of a dense one)."""
    return X.data if sp.issparse(X) else X.reshape(-1)


def _locate(X: np.ndarray | sp.csr_matrix, flat_index: int) -> tuple[int, int]:
    """(cell, gene) of the ``flat_index``-th stored value of ``X``."""
    if sp.issparse(X):
        row = int(np.searchsorted(X.indptr, flat_index, side="right") - 1)
        return row, int(X.indices[flat_index])
    n_genes = X.shape[1]
    return flat_index // n_genes, flat_index % n_genes


def _is_integer_valued(values: np.ndarray) -> np.ndarray:
    return np.abs(values - np.rint(values)) <= _INTEGER_TOLERANCE


def _all_integer_valued(values: np.ndarray) -> bool:
    """``_is_integer_valued(values).all()``, without the temporaries when every value is a whole number.

    A value equal to its rounding is within the tolerance; only when some value is not does the
    tolerance test run (NaN never equals its rounding, so it goes that way too).
    """
    rounded = np.rint(values)
    if np.array_equal(rounded, values):
        return True
    return bool(_is_integer_valued(values).all())


def check_values(X: np.ndarray | sp.csr_matrix, input_kind: str) -> None:
    """Raise :class:`InputKindError` unless the values of ``X`` are plausible for ``input_kind``.

    Refused: NaN or infinite values, negative values, non-integer "counts" (log-normalized data sent
    as counts) and whole-number or out-of-range "lognorm" values (raw counts sent as log-normalized).
    """
    check_input_kind(input_kind)
    values = _values(X)
    if values.size == 0:
        return
    finite = np.isfinite(values)
    if not finite.all():
        cell, gene = _locate(X, int(np.argmin(finite)))
        n_bad = int(values.size - finite.sum())
        raise InputKindError(
            f"input contains {n_bad} NaN or infinite value(s) (first at cell {cell}, gene column {gene}); "
            "send finite numbers (use 0 for genes that were not detected)"
        )
    minimum = float(values.min())
    if minimum < 0:
        cell, gene = _locate(X, int(np.argmin(values)))
        raise InputKindError(
            f"input contains negative values (smallest {minimum:g} at cell {cell}, gene column {gene}); "
            "send raw counts or log-normalized values, never scaled/centred data"
        )
    maximum = float(values.max())
    if input_kind == "counts":
        if not _all_integer_valued(values):
            whole = _is_integer_valued(values)
            cell, gene = _locate(X, int(np.argmin(whole)))
            example = float(values[np.argmin(whole)])
            hint = (
                "they look log-normalized: send input='lognorm' (log1p of counts per 10k) or send raw counts"
                if maximum <= LOGNORM_MAX
                else "send raw (integer) UMI/read counts"
            )
            raise InputKindError(
                f"input declared as raw counts has non-integer values (e.g. {example:g} at cell {cell}, "
                f"gene column {gene}); {hint}"
            )
        return
    if maximum > LOGNORM_MAX:
        raise InputKindError(
            f"input declared as log-normalized has values up to {maximum:g}, more than log1p of normalized "
            f"counts can be (<= {LOGNORM_MAX:g}); if these are raw counts, send input='counts'"
        )
    nonzero = values[values > 0]
    if nonzero.size >= 10 and _is_integer_valued(nonzero).all():
        raise InputKindError(
            "input declared as log-normalized holds only whole numbers, which looks like raw counts; "
            "send input='counts' (the model normalizes them itself)"
        )


def detect_input_kind(X: Any) -> str:
    """Guess whether ``X`` holds raw counts or log-normalized values, or raise :class:`InputKindError`.

    Whole numbers are counts; non-integers no larger than :data:`LOGNORM_MAX` are log-normalized.
    Anything else (negative, non-finite or too large non-integers) fits neither and is refused.
    """
    X = as_matrix(X)
    values = _values(X)
    kind = "counts" if values.size == 0 or _all_integer_valued(values) else "lognorm"
    check_values(X, kind)
    return kind


def to_model_input(values: np.ndarray, input_kind: str, target_sum: float) -> np.ndarray:
    """In place: turn dense values over the model's genes into the model's input and return them.

    Counts become ``log1p(values / row_total * target_sum)`` (rows summing to 0 stay 0); log-normalized
    values pass through unchanged. Training and inference both call this, so they cannot drift apart.
    """
    if check_input_kind(input_kind) == "lognorm":
        return values
    scale = per_cell_scale(values.sum(axis=1, dtype=np.float64), target_sum)
    values *= scale.astype(values.dtype)[:, None]
    np.log1p(values, out=values)
    return values


def log_normalize_sparse(counts: sp.csr_matrix, target_sum: float, dtype: np.dtype | type = np.float32) -> sp.csr_matrix:
    """A new CSR matrix of ``log1p(counts / row_total * target_sum)``, computed in ``dtype``, never densified.

    The sparse twin of :func:`to_model_input` for counts: the same per-cell totals (summed in the dtype of
    ``counts``) and :func:`per_cell_scale`; only the stored values are scaled, so the sparsity pattern is
    that of ``counts`` (rows summing to 0 stay 0). ``counts`` is not modified.
    """
    totals = np.asarray(counts.sum(axis=1), dtype=np.float64).reshape(-1)
    values = counts.data.astype(dtype, copy=True)
    values *= np.repeat(per_cell_scale(totals, target_sum).astype(dtype), np.diff(counts.indptr))
    np.log1p(values, out=values)
    return sp.csr_matrix((values, counts.indices.copy(), counts.indptr.copy()), shape=counts.shape)


def per_cell_scale(totals: np.ndarray, target_sum: float) -> np.ndarray:
    """``target_sum / total`` per cell as float64, 0 for cells whose total is 0 (they stay all zero)."""
    scale = np.zeros_like(totals, dtype=np.float64)
    np.divide(target_sum, totals, out=scale, where=totals > 0)
    return scale


class CellValuesError(InputKindError):
    """:func:`check_rows`: a value of one cell is refused on its own; ``cell`` is that cell's row."""

    def __init__(self, message: str, cell: int) -> None:
        super().__init__(message)
        self.cell = cell


def refused_values(values: np.ndarray, input_kind: str) -> np.ndarray:
    """Mask of the values :func:`check_values` refuses one by one for ``input_kind``.

    Non-finite and negative values; for counts, values further than the tolerance from a whole number;
    for log-normalized values, those above :data:`LOGNORM_MAX`. (:func:`check_values` also refuses
    log-normalized data made only of whole numbers, which no single value shows.)
    """
    with np.errstate(invalid="ignore"):
        refused = ~np.isfinite(values) | (values < 0)
        if check_input_kind(input_kind) == "counts":
            refused |= ~_is_integer_valued(values)
        else:
            refused |= values > LOGNORM_MAX
    return refused


def check_rows(X: np.ndarray | sp.csr_matrix, input_kind: str, first_row: int = 0) -> None:
    """:func:`check_values` for rows of a larger matrix (``X`` holds its rows ``first_row, first_row + 1, ...``).

    Raises:
        CellValuesError: a value is refused on its own. The message is :func:`check_values`' for the first
            row holding one, with cells numbered as in the larger matrix; ``cell`` is that row.
        InputKindError: the rows are refused only together (log-normalized values that are all whole numbers).
    """
    try:
        check_values(X, input_kind)
        return
    except InputKindError as exc:
        together = exc
    refused = refused_values(_values(X), input_kind)
    if sp.issparse(X):
        rows = np.searchsorted(X.indptr, np.flatnonzero(refused), side="right") - 1
    else:
        rows = np.flatnonzero(refused.reshape(X.shape).any(axis=1))
    if rows.size == 0:
        raise together
    row = int(rows[0])
    cell = sp.csr_matrix(X[row : row + 1])
    numbered = sp.csr_matrix(  # the cell preceded by empty rows, so that check_values names its row
        (cell.data, cell.indices, np.concatenate([np.zeros(first_row + row, dtype=np.int64), cell.indptr])),
        shape=(first_row + row + 1, X.shape[1]),
    )
    try:
        check_values(numbered, input_kind)
    except InputKindError as exc:
        raise CellValuesError(str(exc), first_row + row) from None
    raise together
