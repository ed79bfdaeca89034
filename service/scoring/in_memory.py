"""Scoring an AnnData held in memory exactly as ``celltype score`` scores a file (for :func:`celltype.annotate`).

:class:`MatrixRows` gives an in-memory matrix the row interface of :class:`model.h5ad.H5adRows`, so the
cells go through the same steps as a file's: :func:`~service.scoring.inputs.prepare_rows` (genes,
input kind), :func:`~service.scoring.executors.score_locally` (checks, blocks, padding, threads) and
:meth:`~service.scoring_io.ChunkResult.frame` (the obs columns). The columns and scores are the
same as ``celltype score`` writes for the same cells.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from model.errors import InputError
from model.h5ad import RowBlock
from model.predict import Predictor
from model.sparse import check_csr_structure
from service.scoring.executors import score_locally
from service.scoring.inputs import PreparedInput, prepare_rows
from service.scoring.job import DEFAULT_CHUNK_SIZE
from service.scoring.tasks import ChunkTask, chunk_tasks
from service.scoring_io import ChunkResult, ResultColumns


class MatrixRows:
    """Row access to a cells x genes matrix in memory (CSR, other scipy sparse, or dense), named ``path``."""

    def __init__(self, matrix: Any, cell_ids: np.ndarray, path: Path) -> None:
        if sp.issparse(matrix):
            matrix = sp.csr_matrix(matrix)
            # a scipy matrix built from (data, indices, indptr) is not fully checked by scipy: the gene
            # remapping of the scoring blocks indexes by these arrays
            check_csr_structure(
                matrix.indptr, matrix.indices, matrix.data, matrix.shape, what=f"the matrix of {path}",
                fix="rebuild it from valid (data, indices, indptr) arrays",
            )
        elif isinstance(matrix, np.ndarray | np.matrix) and np.ndim(matrix) == 2:
            matrix = np.asarray(matrix)
        else:
            raise InputError(
                f"{path}: the expression matrix must be a numpy array or scipy sparse matrix in memory, got "
                f"{type(matrix).__name__} (load a backed AnnData with .to_memory(), or use celltype score)"
            )
        self.matrix = matrix
        self.path = path
        self.n_cells, self.n_genes = (int(n) for n in matrix.shape)
        self._cell_ids = np.asarray(cell_ids, dtype=object)

    def read(self, start: int, stop: int) -> RowBlock:
        """Rows ``start .. stop - 1`` as stored (CSR parts rebased to 0, or dense rows)."""
        if not sp.issparse(self.matrix):
            return RowBlock(start, stop - start, self.n_genes, self.matrix[start:stop])
        low, high = int(self.matrix.indptr[start]), int(self.matrix.indptr[stop])
        return RowBlock(
            start,
            stop - start,
            self.n_genes,
            self.matrix.data[low:high],
            self.matrix.indices[low:high].astype(np.int32, copy=False),
            (self.matrix.indptr[start : stop + 1] - low).astype(np.int32),
        )

    def cell_ids(self, start: int, stop: int) -> np.ndarray:
        """The obs names of rows ``start .. stop - 1``."""
        return self._cell_ids[start:stop]

    def close(self) -> None:
        """Nothing to release."""


def score_adata(
    predictor: Predictor,
    adata: Any,
    *,
    top_k: int,
    input_kind: str = "auto",
    layer: str | None = None,
    gene_column: str | None = None,
    name: str = "adata",
) -> tuple[pd.DataFrame, PreparedInput]:
    """The result columns of every cell of ``adata`` (indexed by its obs names) and how its input was read.

    Raises:
        InputError: (subclasses) as ``celltype score``: no such layer, genes that do not match, wrong values.
    """
    if layer is None:
        values = adata.X
    elif layer in adata.layers:
        values = adata.layers[layer]
    else:
        raise InputError(f"{name}: has no layer {layer!r}; its layers are {list(adata.layers) or 'none'}")
    if values is None:
        raise InputError(f"{name}: has no X; name one of its layers with layer= ({list(adata.layers)})")
    path = Path(name)
    reader = MatrixRows(values, adata.obs_names.to_numpy(dtype=str), path)
    prepared = prepare_rows(path, reader, predictor, input_kind, adata.var, gene_column)
    columns = ResultColumns(tuple(predictor.classes), top_k)
    results: list[ChunkResult] = []

    def collect(_: ChunkTask, result: ChunkResult) -> None:
        results.append(result)

    score_locally(predictor, [prepared], chunk_tasks([prepared], DEFAULT_CHUNK_SIZE, layer, top_k), columns, collect)
    result = ChunkResult.concat(results) if results else ChunkResult.empty(columns)
    frame = result.frame(columns)
    frame.index = adata.obs_names
    return frame, prepared
