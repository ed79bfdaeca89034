"""Reading uploaded ``.h5ad`` files safely, and writing predictions back as CSV or annotated ``.h5ad``.

An HDF5 file can point outside itself: external links, datasets stored in external files and
virtual datasets would make the server read its own files on a client's behalf, and a small
compressed file can expand to far more than it weighs. :func:`check_h5ad` refuses all of these
before anndata reads anything. Nothing is ever unpickled (h5ad holds no pickles; anndata writes none).
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from model.outputs import CELL_ID_COLUMN, CONFIDENCE_COLUMN, LABEL_COLUMN, PROBABILITY_COLUMN_PREFIX
from model.preprocessing import detect_input_kind
from service.errors import BodyTooLargeError, MalformedBodyError, RequestInputError, too_many_cells

H5AD_MEDIA_TYPE = "application/x-hdf5"
"""Content type of an annotated ``.h5ad`` answer."""


@dataclass
class H5adCells:
    """Cells read from an uploaded file.

    Attributes:
        adata: the whole AnnData, for writing it back annotated.
        matrix: cells x genes (CSR or dense float32) from ``X`` or the chosen layer.
        genes: column names (``var_names`` or the chosen ``var`` column).
        cell_ids: ``obs_names``.
        input_kind: ``"counts"`` or ``"lognorm"`` (as requested, or detected).
    """

    adata: anndata.AnnData
    matrix: np.ndarray | sp.csr_matrix
    genes: list[str]
    cell_ids: list[str]
    input_kind: str


def check_h5ad(path: str | os.PathLike[str], max_expanded_bytes: int) -> None:
    """Refuse (400/413) a file that is not HDF5, reaches outside itself or expands beyond the limit."""
    try:
        handle = h5py.File(path, "r")
    except OSError:
        raise MalformedBodyError("the upload is not an HDF5/.h5ad file; send a file written by anndata") from None
    with handle:
        problems: list[str] = []
        expanded = 0

        def inspect(name: str, link: Any) -> None:
            nonlocal expanded
            if isinstance(link, h5py.ExternalLink):
                problems.append(f"'{name}' is an external link")
                return
            if not isinstance(link, h5py.HardLink):
                return
            node = handle[name]
            if isinstance(node, h5py.Dataset):
                if node.external:
                    problems.append(f"'{name}' is stored in an external file")
                elif node.is_virtual:
                    problems.append(f"'{name}' is a virtual dataset")
                expanded += node.size * node.dtype.itemsize

        try:
            handle.visititems_links(inspect)
        except (OSError, KeyError, RuntimeError) as exc:
            raise MalformedBodyError(f"the .h5ad file is damaged ({exc})") from None
    if problems:
        raise RequestInputError(
            "the .h5ad file refers to data outside itself, which is never read: "
            + "; ".join(problems[:5])
            + ". Save a self-contained file (anndata's write_h5ad)"
        )
    if expanded > max_expanded_bytes:
        raise BodyTooLargeError(
            f"the .h5ad file expands to {expanded} bytes, more than the {max_expanded_bytes} accepted; "
            "send fewer cells per upload (or use `celltype score` for large files)"
        )


def read_h5ad_cells(
    path: str | os.PathLike[str],
    *,
    layer: str | None,
    gene_column: str | None,
    input_kind: str,
    max_cells: int,
    max_expanded_bytes: int,
) -> H5adCells:
    """Read an uploaded ``.h5ad`` after :func:`check_h5ad`.

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
        adata = anndata.read_h5ad(path)
    except Exception as exc:  # anndata raises many kinds for files it cannot read; all mean the same
        raise RequestInputError(f"the .h5ad file could not be read by anndata ({type(exc).__name__}: {exc})") from None
    if adata.n_obs > max_cells:
        raise too_many_cells(adata.n_obs, max_cells)
    if adata.n_obs == 0:
        raise RequestInputError("the .h5ad file has no cells")
    if layer is None:
        values = adata.X
        if values is None:
            raise RequestInputError(f"the .h5ad file has no X; name one of its layers with ?layer= ({list(adata.layers)})")
    elif layer in adata.layers:
        values = adata.layers[layer]
    else:
        raise RequestInputError(f"the .h5ad file has no layer {layer!r}; its layers are {list(adata.layers)}")
    matrix = _as_float32(values)
    if gene_column is None:
        genes = [str(g) for g in adata.var_names]
    elif gene_column in adata.var.columns:
        genes = [str(g) for g in adata.var[gene_column]]
    else:
        raise RequestInputError(f"var has no column {gene_column!r}; its columns are {list(adata.var.columns)}")
    kind = detect_input_kind(matrix) if input_kind == "auto" else input_kind
    return H5adCells(adata, matrix, genes, [str(c) for c in adata.obs_names], kind)


def _as_float32(values: Any) -> np.ndarray | sp.csr_matrix:
    if sp.issparse(values):
        return sp.csr_matrix(values, dtype=np.float32)
    if isinstance(values, np.ndarray) and values.ndim == 2 and values.dtype.kind in "iuf":
        return values.astype(np.float32, copy=False)
    raise RequestInputError(f"the expression matrix must be numeric (dense or sparse); got {type(values).__name__}")


def annotated_h5ad(cells: H5adCells, labels: np.ndarray, confidence: np.ndarray, directory: Path) -> bytes:
    """The uploaded file with ``obs['predicted_cell_type']`` and ``obs['confidence']`` added, as bytes."""
    adata = cells.adata
    adata.obs[LABEL_COLUMN] = pd.Categorical(np.asarray(labels, dtype=str))
    adata.obs[CONFIDENCE_COLUMN] = np.asarray(confidence, dtype=np.float32)
    target = directory / "annotated.h5ad"
    try:
        adata.write_h5ad(target)
    except Exception as exc:  # a file anndata could read but not write back: tell the client to use CSV
        raise RequestInputError(
            f"the annotated file could not be written ({type(exc).__name__}: {exc}); ask for format=csv or json"
        ) from None
    return target.read_bytes()


def predictions_csv(records: list[dict[str, Any]], classes: list[str]) -> bytes:
    """CSV with ``cell_id``, ``predicted_cell_type``, ``confidence`` and, when present, one probability column
    per cell type (``probability:<type>``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    with_probabilities = bool(records) and "probabilities" in records[0]
    header = [CELL_ID_COLUMN, LABEL_COLUMN, CONFIDENCE_COLUMN]
    if with_probabilities:
        header += [f"{PROBABILITY_COLUMN_PREFIX}{name}" for name in classes]
    writer.writerow(header)
    for record in records:
        row = [record.get("cell_id", ""), record["label"], repr(record["confidence"])]
        if with_probabilities:
            row += [repr(record["probabilities"][name]) for name in classes]
        writer.writerow(row)
    return buffer.getvalue().encode("utf-8")
