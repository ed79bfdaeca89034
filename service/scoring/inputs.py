"""Opening an input before any work: its genes aligned to the model's, its values checked on its first cells."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from model.errors import GeneMismatchError, InputError, InputKindError
from model.genes import GeneAlignment
from model.predict import Predictor
from model.preprocessing import as_matrix, check_values, detect_input_kind
from service.scoring_io import H5adRows

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
    reader: H5adRows
    alignment: GeneAlignment
    input_kind: str
    detected: bool


def _prefixed(exc: InputError, path: Path) -> InputError:
    return type(exc)(f"{path}: {exc}")


def prepare_input(path: Path, predictor: Predictor, requested_kind: str, layer: str | None) -> PreparedInput:
    """Open ``path``, align its genes and check (or detect) its input kind on its first cells.

    Raises:
        InputError: unreadable file; GeneMismatchError: genes do not match; InputKindError: wrong values.
    """
    reader = H5adRows(path, layer)
    try:
        try:
            alignment = predictor.align(reader.genes)
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
    except BaseException:
        reader.close()
        raise
    return PreparedInput(path, reader, alignment, input_kind, detected=requested_kind == "auto")
