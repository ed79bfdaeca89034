"""Reading uploaded ``.h5ad`` files safely, and writing predictions back as CSV or annotated ``.h5ad``.

An HDF5 file can point outside itself: external links, datasets stored in external files and
virtual datasets would make the server read its own files on a client's behalf, and a small
compressed file can expand to far more than it weighs. :func:`check_h5ad` refuses all of these
(:func:`model.h5ad.inspect_h5ad`) before anything is read; the matrix is then read, structurally
checked, by the project's one row reader (:class:`model.h5ad.H5adRows`). Nothing is ever unpickled
(h5ad holds no pickles; anndata writes none).
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from model.genes import var_column_genes
from model.h5ad import (
    H5adExternalDataError,
    H5adRows,
    H5adTooLargeError,
    NotAnnDataError,
    NotH5adError,
    inspect_h5ad,
)
from model.novelty import UNKNOWN_REASONS
from model.outputs import (
    CELL_ID_COLUMN,
    CONFIDENCE_COLUMN,
    LABEL_COLUMN,
    PROBABILITY_COLUMN_PREFIX,
    UNKNOWN_REASON_COLUMN,
)
from model.preprocessing import detect_input_kind
from model.provenance import PROVENANCE_KEY, for_h5ad
from service.errors import BodyTooLargeError, MalformedBodyError, RequestInputError, too_many_cells

H5AD_MEDIA_TYPE = "application/x-hdf5"
"""Content type of an annotated ``.h5ad`` answer."""


@dataclass
class H5adCells:
    """Cells read from an uploaded file.

    Attributes:
        adata: the whole AnnData when it was built in memory (CSV uploads); ``None`` for an ``.h5ad``
            upload, which is read back from ``path`` only if it is answered annotated.
        matrix: cells x genes (CSR or dense float32) from ``X`` or the chosen layer.
        genes: column names (``var_names`` or the chosen ``var`` column).
        cell_ids: ``obs_names``.
        input_kind: ``"counts"`` or ``"lognorm"`` (as requested, or detected).
        path: the saved ``.h5ad`` upload (``None`` for CSV uploads).
    """

    adata: anndata.AnnData | None
    matrix: np.ndarray | sp.csr_matrix
    genes: list[str]
    cell_ids: list[str]
    input_kind: str
    path: Path | None = None


UPLOAD_NAME = "the .h5ad file"
"""How error messages name an upload (never by its temporary path)."""


def check_h5ad(path: str | os.PathLike[str], max_expanded_bytes: int) -> None:
    """Refuse (400/413/422) a file that is not HDF5, reaches outside itself or expands beyond the limit.

    The checks are :func:`model.h5ad.inspect_h5ad`'s; this maps them to request errors.
    """
    try:
        inspect_h5ad(path, max_expanded_bytes)
    except NotH5adError as exc:
        raise MalformedBodyError(str(exc)) from None
    except H5adTooLargeError as exc:
        raise BodyTooLargeError(str(exc)) from None
    except H5adExternalDataError as exc:
        raise RequestInputError(str(exc)) from None


def read_h5ad_cells(
    path: str | os.PathLike[str],
    *,
    layer: str | None,
    gene_column: str | None,
    input_kind: str,
    max_cells: int,
    max_expanded_bytes: int,
) -> H5adCells:
    """Read an uploaded ``.h5ad`` after :func:`check_h5ad`, with the project's row reader.

    The matrix is read by :class:`model.h5ad.H5adRows`, so its CSR structure is checked
    (:func:`model.sparse.check_csr_structure`) before anything computes with it; a broken one is a 422
    naming the first bad row.

    Args:
        path: the saved upload.
        layer: use ``layers[layer]`` instead of ``X``.
        gene_column: take gene names from this ``var`` column instead of ``var_names``.
        input_kind: ``"counts"``, ``"lognorm"`` or ``"auto"`` (detected from the values).
        max_cells: more cells than this is answered with 413.
        max_expanded_bytes: see :func:`check_h5ad`.
    """
    check_h5ad(path, max_expanded_bytes)
    try:
        reader = H5adRows(path, layer, allow_csc=True, layer_hint="(leave out ?layer= to use X)", name=UPLOAD_NAME)
    except NotH5adError as exc:
        raise MalformedBodyError(str(exc)) from None
    except NotAnnDataError as exc:
        raise RequestInputError(f"the .h5ad file could not be read by anndata ({exc})") from None
    with reader:
        if reader.n_cells > max_cells:
            raise too_many_cells(reader.n_cells, max_cells)
        if reader.n_cells == 0:
            raise RequestInputError("the .h5ad file has no cells")
        block = reader.read(0, reader.n_cells)
        matrix = block.csr() if block.is_sparse else np.asarray(block.values, dtype=np.float32)
        genes = reader.genes if gene_column is None else var_column_genes(reader.var_frame(), gene_column)
        cell_ids = [str(c) for c in reader.cell_ids(0, reader.n_cells)]
    kind = detect_input_kind(matrix) if input_kind == "auto" else input_kind
    return H5adCells(None, matrix, genes, cell_ids, kind, Path(path))


def annotated_h5ad(
    cells: H5adCells,
    labels: np.ndarray,
    confidence: np.ndarray,
    directory: Path,
    unknown_reason: np.ndarray | None = None,
    provenance: dict[str, Any] | None = None,
) -> bytes:
    """The uploaded file with ``obs['predicted_cell_type']``, ``obs['confidence']`` and (when given)
    ``obs['unknown_reason']`` (categorical over every reason) added, and ``provenance`` in
    ``uns['celltype']`` (:mod:`model.provenance`), as bytes."""
    adata = cells.adata if cells.adata is not None else _read_anndata(cells.path)
    if provenance is not None:
        adata.uns[PROVENANCE_KEY] = for_h5ad(provenance)
    adata.obs[LABEL_COLUMN] = pd.Categorical(np.asarray(labels, dtype=str))
    adata.obs[CONFIDENCE_COLUMN] = np.asarray(confidence, dtype=np.float32)
    if unknown_reason is not None:
        adata.obs[UNKNOWN_REASON_COLUMN] = pd.Categorical(
            np.asarray(unknown_reason, dtype=str), categories=list(UNKNOWN_REASONS)
        )
    target = directory / "annotated.h5ad"
    try:
        adata.write_h5ad(target)
    except Exception as exc:  # a file anndata could read but not write back: tell the client to use CSV
        raise RequestInputError(
            f"the annotated file could not be written ({type(exc).__name__}: {exc}); ask for format=csv or json"
        ) from None
    return target.read_bytes()


def _read_anndata(path: Path | None) -> anndata.AnnData:
    """The whole upload as AnnData, to be written back annotated (its matrix was already checked)."""
    try:
        return anndata.read_h5ad(path)
    except Exception as exc:  # anndata raises many kinds for files it cannot read; all mean the same
        raise RequestInputError(
            f"the .h5ad file could not be read by anndata ({type(exc).__name__}: {exc}); ask for format=csv or json"
        ) from None


def predictions_csv(records: list[dict[str, Any]], classes: list[str]) -> bytes:
    """CSV with ``cell_id``, ``predicted_cell_type``, ``confidence``, ``unknown_reason`` and, when present, one
    probability column per cell type (``probability:<type>``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    with_probabilities = bool(records) and "probabilities" in records[0]
    header = [CELL_ID_COLUMN, LABEL_COLUMN, CONFIDENCE_COLUMN, UNKNOWN_REASON_COLUMN]
    if with_probabilities:
        header += [f"{PROBABILITY_COLUMN_PREFIX}{name}" for name in classes]
    writer.writerow(header)
    for record in records:
        row = [record.get("cell_id", ""), record["label"], repr(record["confidence"]), record[UNKNOWN_REASON_COLUMN]]
        if with_probabilities:
            row += [repr(record["probabilities"][name]) for name in classes]
        writer.writerow(row)
    return buffer.getvalue().encode("utf-8")
