"""Opening an input before any work: its genes aligned to the model's, its values checked on its first cells."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from model.errors import GeneMismatchError, InputError, InputKindError
from model.genes import GeneAlignment, var_column_genes
from model.h5ad import H5adRows, RowBlock
from model.predict import Predictor
from model.preprocessing import as_matrix, check_values, detect_input_kind


class Rows(Protocol):
    """Where a scoring run reads cells: :class:`model.h5ad.H5adRows` (a file) or
    :class:`service.scoring.in_memory.MatrixRows` (an AnnData in memory)."""

    path: Any
    n_cells: int
    n_genes: int

    def read(self, start: int, stop: int) -> RowBlock:
        """Rows ``start .. stop - 1`` as stored."""

    def cell_ids(self, start: int, stop: int) -> np.ndarray:
        """The names of rows ``start .. stop - 1``."""

    def close(self) -> None:
        """Release the source."""

SAMPLE_CELLS = 10_000
"""Cells at the start of each input whose values are checked (and the input kind detected) up front."""


@dataclass(frozen=True)
class PreparedInput:
    """An opened, aligned and sampled input.

    Attributes:
        path: the path as given.
        reader: row access to its matrix.
        alignment: its genes matched to the model's.
        input_kind: the kind its values are read as.
        detected: True when the kind was detected rather than declared.
    """

    path: Path
    reader: Rows
    alignment: GeneAlignment
    input_kind: str
    detected: bool


def _prefixed(exc: InputError, path: Path) -> InputError:
    return type(exc)(f"{path}: {exc}")


def prepare_input(
    path: Path, predictor: Predictor, requested_kind: str, layer: str | None, gene_column: str | None = None
) -> PreparedInput:
    """Open ``path``, align its genes and check (or detect) its input kind on its first cells.

    Genes are named by ``var_names``, or by the ``var`` column ``gene_column``; either may use any of
    the model's identifiers (:meth:`Predictor.align`), and too little overlap names the ``var``
    columns that would have matched.

    Raises:
        InputError: unreadable file; GeneMismatchError: genes do not match; InputKindError: wrong values.
    """
    reader = H5adRows(path, layer)
    try:
        return prepare_rows(path, reader, predictor, requested_kind, reader.var_frame(), gene_column)
    except BaseException:
        reader.close()
        raise


def prepare_rows(
    path: Path, reader: Rows, predictor: Predictor, requested_kind: str, var: Any, gene_column: str | None
) -> PreparedInput:
    """Align the genes of ``reader`` (named by ``var``, see :func:`prepare_input`) and check its first cells.

    ``reader`` is any row source with ``read``, ``n_cells``, ``n_genes``, ``cell_ids`` and ``close``
    (an open file, or an AnnData in memory for :func:`celltype.annotate`); errors name ``path``.
    """
    try:
        alignment = predictor.align(var_column_genes(var, gene_column), var=var)
    except GeneMismatchError as exc:
        raise _prefixed(exc, path) from None
    sample_block = reader.read(0, min(reader.n_cells, SAMPLE_CELLS))
    sample = as_matrix(sample_block.csr() if sample_block.is_sparse else sample_block.values)
    try:
        if requested_kind == "auto":
            input_kind = detect_input_kind(sample)
        else:
            check_values(sample, requested_kind)
            input_kind = requested_kind
    except InputKindError as exc:
        raise _prefixed(exc, path) from None
    return PreparedInput(path, reader, alignment, input_kind, detected=requested_kind == "auto")
