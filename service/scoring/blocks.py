"""Scoring one chunk: blocks of rows read, checked, moved onto the model's genes and predicted side by side.

Blocks never hold fewer than :data:`MIN_FORWARD_ROWS` rows in a forward pass (short blocks are padded
with empty cells), so a cell's scores are the same whatever block it falls in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import scipy.sparse as sp

from model.errors import InputKindError
from model.h5ad import H5adRows, RowBlock
from model.novelty import UNKNOWN_REASONS
from model.predict import Predictor
from model.preprocessing import CellValuesError, check_rows
from service.scoring.tasks import ChunkTask
from service.scoring_io import ChunkResult, ResultColumns

BLOCK_ROWS = 1024
"""Cells read and scored at once within a chunk. Bounds memory (8 MB of model input for 2,000 genes); larger
blocks are slower on CPU, as their temporaries no longer fit the allocator's reuse threshold (page faults)."""
MIN_FORWARD_ROWS = 64
"""Shorter blocks are padded with empty cells: CPU matrix kernels round differently for a handful of rows."""

T = TypeVar("T")
R = TypeVar("R")


class GeneSelector:
    """Turns a file's rows into rows over the model's genes, in the model's order (missing genes are 0).

    Sparse rows stay sparse: their column indices are remapped and the columns the model does not use
    are dropped, which is much cheaper than selecting columns of a CSR matrix.
    """

    def __init__(self, source_index: np.ndarray, n_input_genes: int) -> None:
        self.n_model_genes = int(source_index.shape[0])
        self._found = np.flatnonzero(source_index >= 0)
        self._source = source_index[self._found]
        self.identity = n_input_genes == self.n_model_genes and bool(
            np.array_equal(source_index, np.arange(self.n_model_genes))
        )
        self._model_column = np.full(n_input_genes, -1, dtype=np.int32)
        self._model_column[self._source] = self._found

    def select(self, block: RowBlock) -> sp.csr_matrix | np.ndarray:
        """The block's float32 values over the model's genes (CSR for CSR input, else dense).

        Indexes by the block's column indices and row pointers, and hands them to scipy's compiled kernels:
        it runs only on blocks from :meth:`model.h5ad.H5adRows.read` or
        :class:`service.scoring.in_memory.MatrixRows`, whose structure :func:`model.sparse.check_csr_structure`
        has guaranteed.
        """
        if block.is_sparse:
            data, indices, indptr = block.values, block.indices, block.indptr
            if data.dtype != np.float32:
                data = data.astype(np.float32)
            if not self.identity:
                columns = self._model_column[indices]
                keep = columns >= 0
                data, indices = data[keep], columns[keep]
                kept_before = np.zeros(keep.size + 1, dtype=np.int32)
                np.cumsum(keep, out=kept_before[1:])
                indptr = kept_before[indptr]
            return sp.csr_matrix((data, indices, indptr), shape=(block.n_rows, self.n_model_genes))
        values = np.asarray(block.values, dtype=np.float32)
        if self.identity:
            return values
        selected = np.zeros((block.n_rows, self.n_model_genes), dtype=np.float32)
        selected[:, self._found] = values[:, self._source]
        return selected


def check_block_values(block: RowBlock, input_kind: str, reader: H5adRows) -> None:
    """Raise :class:`InputKindError` naming the cell (file row and obs name) if a value is wrong for the kind.

    The rules and messages are the service's (:func:`model.preprocessing.check_rows`); cells are numbered
    as in the file, and a block refused only as a whole is named by its range of cells.
    """
    try:
        check_rows(block.csr() if block.is_sparse else block.values, input_kind, block.start)
    except CellValuesError as exc:
        name = reader.cell_ids(exc.cell, exc.cell + 1)[0]
        raise InputKindError(f"{reader.path}: {exc} (cell {exc.cell} is obs name {name!r})") from None
    except InputKindError as exc:
        last = block.start + block.n_rows - 1
        raise InputKindError(f"{reader.path}: cells {block.start}..{last}: {exc}") from None


def forward_rows() -> int:
    """The ``chunk_size`` of the Predictors used here: every (padded) block in one forward pass."""
    return max(BLOCK_ROWS, MIN_FORWARD_ROWS)


def pad_rows(matrix: sp.csr_matrix | np.ndarray, n_rows: int) -> sp.csr_matrix | np.ndarray:
    """``matrix`` with empty cells appended up to ``n_rows`` rows (unchanged if it has enough)."""
    missing = n_rows - matrix.shape[0]
    if missing <= 0:
        return matrix
    if sp.issparse(matrix):
        indptr = np.concatenate(
            [matrix.indptr, np.full(missing, matrix.indptr[-1], dtype=matrix.indptr.dtype)]
        )
        return sp.csr_matrix((matrix.data, matrix.indices, indptr), shape=(n_rows, matrix.shape[1]))
    return np.vstack([matrix, np.zeros((missing, matrix.shape[1]), dtype=matrix.dtype)])


def predict_block(
    predictor: Predictor, matrix: sp.csr_matrix | np.ndarray, input_kind: str, columns: ResultColumns
) -> ChunkResult:
    n_cells = matrix.shape[0]
    annotation = predictor.annotate(pad_rows(matrix, MIN_FORWARD_ROWS), None, input_kind=input_kind)
    probabilities = annotation.probabilities[:n_cells]
    code_of = {label: code for code, label in enumerate(columns.label_categories)}
    codes = np.fromiter(
        (code_of[label] for label in annotation.labels[:n_cells]), dtype=np.int32, count=n_cells
    )
    reason_of = {reason: code for code, reason in enumerate(UNKNOWN_REASONS)}
    reason_codes = np.fromiter(
        (reason_of[reason] for reason in annotation.unknown_reason[:n_cells]), dtype=np.int8, count=n_cells
    )
    n_top = columns.n_top
    if n_top:
        top_index = np.argsort(-probabilities, axis=1, kind="stable")[:, :n_top].astype(np.int32)
        top_prob = np.take_along_axis(probabilities, top_index, axis=1)
    else:
        top_index = np.zeros((n_cells, 0), dtype=np.int32)
        top_prob = np.zeros((n_cells, 0), dtype=np.float32)
    return ChunkResult(
        label_codes=codes,
        confidence=annotation.confidence[:n_cells].astype(np.float32),
        reason_codes=reason_codes,
        top_index=top_index,
        top_prob=top_prob,
        probabilities=probabilities if columns.per_class else np.zeros((n_cells, 0), dtype=np.float32),
    )


def ordered_map(function: Callable[[T], R], items: Iterable[T], threads: int) -> Iterator[R]:
    """``map(function, items)`` on ``threads`` threads, results in order, at most ``2 * threads`` in flight.

    Each block's reading, checking, normalization and forward pass run in one thread with torch limited to
    one intra-op thread: numpy, scipy, h5py and torch release the GIL for the heavy work, so blocks use
    the cores side by side without the synchronization of a multi-threaded matrix product.
    """
    if threads <= 1:
        yield from map(function, items)
        return
    pool = ThreadPoolExecutor(threads, thread_name_prefix="celltype-score")
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) > 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def score_chunk(
    predictor: Predictor, reader: H5adRows, task: ChunkTask, columns: ResultColumns, threads: int = 1
) -> ChunkResult:
    """Score the cells of ``task`` read from ``reader``, block by block, on ``threads`` threads.

    Raises:
        InputKindError: a value in the chunk does not fit the input kind (the message names the cell).
    """
    selector = GeneSelector(task.source_index, reader.n_genes)

    def score_block(start: int) -> ChunkResult:
        stop = min(start + BLOCK_ROWS, task.stop)
        block = reader.read(start, stop)
        check_block_values(block, task.input_kind, reader)
        try:
            return predict_block(predictor, selector.select(block), task.input_kind, columns)
        except InputKindError as exc:  # the whole-number test of log-normalized values, on the whole block
            raise InputKindError(f"{reader.path}: cells {start}..{stop - 1}: {exc}") from None

    return ChunkResult.concat(
        list(ordered_map(score_block, range(task.start, task.stop, BLOCK_ROWS), threads))
    )
