"""``/v1/predict`` bodies: JSON (:class:`service.schemas.PredictRequest`) and npz, as :class:`PredictionInput`."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from service.decoding.csr import check_csr
from service.decoding.fields import check_names, check_options
from service.decoding.json_body import JsonBody, read_json
from service.decoding.npz import check_numeric, read_npz, string_array
from service.decoding.prediction_input import PredictionInput
from service.errors import RequestInputError, too_many_cells
from service.schemas import PredictRequest

PREDICT_FIELDS = frozenset(PredictRequest.model_fields)


def decode_predict_json(body: bytes, max_cells: int) -> PredictionInput:
    """Decode a ``/v1/predict`` JSON body (see :class:`PredictRequest`), raising 4xx with a ``detail``."""
    return read_json(body, lambda document: _decode_predict(document, max_cells), rows_at=(("cells",), max_cells))


def _decode_predict(document: JsonBody, max_cells: int) -> PredictionInput:
    unknown = sorted(set(document.keys()) - PREDICT_FIELDS)
    if unknown:
        raise RequestInputError(f"unknown field(s) {unknown}; allowed: {sorted(PREDICT_FIELDS)}")
    genes = document.value(("genes",))
    if genes is None:
        raise RequestInputError("'genes' is required: the gene name of every column")
    genes = check_names(genes, "genes")
    options = check_options(
        document.value(("input",), "counts"),
        document.value(("top_k",)),
        document.value(("return_probabilities",), False),
        document.value(("threshold",)),
    )
    has_cells, has_csr = document.has(("cells",)), document.has(("csr",))
    if has_cells == has_csr:
        raise RequestInputError("send exactly one of 'cells' (dense rows) or 'csr' (sparse matrix)")
    if has_cells:
        matrix: np.ndarray | sp.csr_matrix = np.asarray(document.matrix(("cells",), len(genes), max_cells), dtype=np.float32)
    else:
        unknown = sorted(set(document.keys(("csr",))) - {"indptr", "indices", "data"})
        if unknown:
            raise RequestInputError(f"unknown field(s) {unknown} in 'csr'; allowed: ['data', 'indices', 'indptr']")
        indptr = document.vector(("csr", "indptr"))
        if indptr.size - 1 > max_cells:
            raise too_many_cells(indptr.size - 1, max_cells)
        if indptr.size <= 1:
            raise RequestInputError("'csr' holds no cells; send at least one cell")
        matrix = check_csr(
            indptr, document.vector(("csr", "indices")), document.vector(("csr", "data")), len(genes), "csr"
        )
    cell_ids = document.value(("cell_ids",))
    if cell_ids is not None:
        cell_ids = check_names(cell_ids, "cell_ids", expected=matrix.shape[0])
    return PredictionInput(matrix, genes, cell_ids, *options)


def decode_predict_npz(body: bytes, max_cells: int, max_expanded_bytes: int, options: dict[str, Any]) -> PredictionInput:
    """Decode a ``numpy.savez`` body: ``genes`` plus ``X`` (dense) or ``data``/``indices``/``indptr`` (CSR).

    ``cell_ids`` is optional. Nothing is unpickled; the archive's declared sizes are checked against
    ``max_expanded_bytes`` before anything is decompressed. ``options`` are the query-string options.
    """
    arrays = read_npz(body, max_expanded_bytes)
    allowed = {"genes", "X", "data", "indices", "indptr", "cell_ids"}
    unknown = sorted(set(arrays) - allowed)
    if unknown:
        raise RequestInputError(f"unknown array(s) {unknown} in the npz; allowed: {sorted(allowed)}")
    if "genes" not in arrays:
        raise RequestInputError("the npz must contain 'genes': the gene name of every column")
    genes = string_array(arrays["genes"], "genes")
    csr_parts = {"data", "indices", "indptr"} & set(arrays)
    if ("X" in arrays) == bool(csr_parts):
        raise RequestInputError("the npz must contain either 'X' (dense cells x genes) or 'data', 'indices', 'indptr' (CSR)")
    if "X" in arrays:
        dense = arrays["X"]
        if dense.ndim != 2:
            raise RequestInputError(f"'X' must be 2-D (cells x genes); got shape {dense.shape}")
        if dense.shape[0] > max_cells:
            raise too_many_cells(dense.shape[0], max_cells)
        if dense.shape[0] == 0:
            raise RequestInputError("'X' has no cells; send at least one cell")
        if dense.shape[1] != len(genes):
            raise RequestInputError(f"'X' has {dense.shape[1]} columns but {len(genes)} genes were named; send one column per gene")
        check_numeric(dense, "X")
        matrix: np.ndarray | sp.csr_matrix = np.ascontiguousarray(dense, dtype=np.float32)
    else:
        if csr_parts != {"data", "indices", "indptr"}:
            raise RequestInputError("a CSR npz needs all of 'data', 'indices' and 'indptr'")
        parts = {name: arrays[name].reshape(-1) for name in ("data", "indices", "indptr")}
        for name, part in parts.items():
            check_numeric(part, name)
        if parts["indptr"].size - 1 > max_cells:
            raise too_many_cells(parts["indptr"].size - 1, max_cells)
        if parts["indptr"].size <= 1:
            raise RequestInputError("'indptr' holds no cells; send at least one cell")
        matrix = check_csr(parts["indptr"], parts["indices"], parts["data"], len(genes), "npz")
    cell_ids = None
    if "cell_ids" in arrays:
        cell_ids = string_array(arrays["cell_ids"], "cell_ids")
        if len(cell_ids) != matrix.shape[0]:
            raise RequestInputError(f"'cell_ids' has {len(cell_ids)} entries but there are {matrix.shape[0]} cells")
    checked = check_options(
        options.get("input", "counts"),
        options.get("top_k"),
        options.get("return_probabilities", False),
        options.get("threshold"),
    )
    return PredictionInput(matrix, genes, cell_ids, *checked)



def warm_up() -> None:
    """Compile (or load from numba's cache) the matrix reader, so no request pays for it."""
    decode_predict_json(b'{"genes": ["a"], "cells": [[1], [2.5e-1]]}', 10)
