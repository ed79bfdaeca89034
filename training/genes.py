"""Choosing the genes a model is trained on: highly variable genes, found within each lab.

Pooled over labs, the most variable genes are often the ones that differ between labs (protocol,
chemistry, ambient RNA), and a model built on them learns the lab. ``hvg_batch_aware`` therefore
ranks genes by their variability WITHIN each batch and combines the batches' rankings, so a gene has
to vary among the cells of many labs to be chosen:

1. Values are log-normalized when the data holds counts, as a model's input is
   (:func:`model.preprocessing.log_normalize_sparse` with the data's ``Preprocessing``).
2. A gene is eligible when it is detected (non-zero) in at least ``min_cells`` cells overall and in
   at least ``min_cells_per_batch`` cells of every batch with at least :data:`MIN_BATCH_CELLS` cells:
   a gene missing from a lab (not measured there, or filtered out upstream) cannot be used on that lab.
3. In each such batch, each eligible gene gets a dispersion ``log(variance / mean)``, standardized
   among genes of similar mean (:data:`N_MEAN_BINS` equal-size bins of the batch's mean expression,
   ``(d - median) / MAD``), so that highly expressed genes are not preferred for their mean alone.
4. Genes are ordered by the number of batches in which they are among the ``n_top`` most dispersed
   (more is better), then by their median rank over the batches, then by their column (so ties are
   broken deterministically), and the first ``n_top`` are returned.

``hvg_pooled`` is the same computation with all cells as one batch, for comparison. Statistics are
accumulated over chunks of :data:`STATS_ROWS` rows (never densified), in one streaming pass: from the
CSR matrix in memory, or read from the files block by block for data left on disk
(:class:`training.streaming.DiskLabeledData`); both give the same sums in the same order, hence the
same genes. The result depends only on the data.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import scipy.sparse as sp

from model.errors import InputError
from model.preprocessing import log_normalize_sparse
from training.data import LabeledData
from training.streaming import DiskLabeledData

GENE_SELECTION_METHODS = ("hvg_batch_aware", "hvg_pooled")
"""The methods :func:`select_genes` understands."""

MIN_BATCH_CELLS = 10
"""Batches with fewer cells are too small to rank genes or to require their detection."""

N_MEAN_BINS = 20
"""Mean-expression bins within which dispersions are standardized."""

STATS_ROWS = 4096
"""Rows per chunk of the streaming statistics pass (fixed, so that memory and disk sum alike)."""


def select_genes(
    data: LabeledData | DiskLabeledData,
    n_top: int | None = 2000,
    method: str = "hvg_batch_aware",
    *,
    min_cells: int = 10,
    min_cells_per_batch: int = 1,
) -> list[str]:
    """The ``n_top`` most informative genes of ``data``, best first (see the module docstring).

    Args:
        data: the training cells, in memory or on disk (read once, in row blocks).
        n_top: how many genes to return; ``None`` returns every eligible gene, ranked. Fewer are
            returned when fewer genes are eligible.
        method: one of :data:`GENE_SELECTION_METHODS`.
        min_cells: least number of cells a gene must be detected in overall.
        min_cells_per_batch: least number of cells a gene must be detected in within every batch of
            at least :data:`MIN_BATCH_CELLS` cells (0 disables this rule).

    Raises:
        ValueError: unknown method or ``n_top < 1``.
        InputError: no batch has :data:`MIN_BATCH_CELLS` cells, or no gene is eligible.
    """
    if method not in GENE_SELECTION_METHODS:
        raise ValueError(f"unknown gene selection method {method!r}; choose one of {', '.join(GENE_SELECTION_METHODS)}")
    if n_top is not None and n_top < 1:
        raise ValueError(f"n_top must be a positive number of genes or None for all (got {n_top})")
    if method == "hvg_pooled":
        codes = np.zeros(data.n_cells, dtype=np.int64)
    else:
        codes = np.unique(data.batches, return_inverse=True)[1].reshape(-1)
    n_batches = int(codes.max()) + 1 if codes.size else 0
    target_sum = data.preprocessing.target_sum
    sums, squares, detected = _batch_statistics(
        _row_chunks(data), codes, n_batches, data.n_genes, data.input_kind, target_sum
    )
    sizes = np.bincount(codes, minlength=n_batches)
    large = np.flatnonzero(sizes >= MIN_BATCH_CELLS)
    if large.size == 0:
        raise InputError(
            f"gene selection needs a batch of at least {MIN_BATCH_CELLS} cells; the largest has "
            f"{int(sizes.max()) if sizes.size else 0}"
        )
    eligible = detected.sum(axis=0) >= min_cells
    if min_cells_per_batch > 0:
        eligible &= (detected[large] >= min_cells_per_batch).all(axis=0)
    if not eligible.any():
        raise InputError(
            f"no gene is detected in at least {min_cells} cells overall and {min_cells_per_batch} cells of "
            f"every batch; lower min_cells / min_cells_per_batch or check the data"
        )
    limit = int(eligible.sum()) if n_top is None else min(n_top, int(eligible.sum()))
    candidates = np.flatnonzero(eligible)
    ranks = np.empty((large.size, candidates.size), dtype=np.int64)
    for row, b in enumerate(large):
        n = sizes[b]
        mean = sums[b, candidates] / n
        variance = np.maximum(squares[b, candidates] / n - mean**2, 0.0) * (n / (n - 1))
        scores = _standardized_dispersion(mean, variance)
        order = np.lexsort((np.arange(candidates.size), -scores))
        ranks[row, order] = np.arange(candidates.size)
    n_variable = (ranks < limit).sum(axis=0)
    median_rank = np.median(ranks, axis=0)
    best = np.lexsort((candidates, median_rank, -n_variable))[:limit]
    return [data.genes[i] for i in candidates[best]]


def _row_chunks(data: LabeledData | DiskLabeledData) -> Iterator[sp.csr_matrix]:
    """``data``'s rows in order, :data:`STATS_ROWS` at a time, as CSR matrices."""
    if isinstance(data, DiskLabeledData):
        yield from data.row_blocks(STATS_ROWS)
        return
    for start in range(0, data.n_cells, STATS_ROWS):
        yield data.X[start : start + STATS_ROWS]


def _batch_statistics(
    chunks: Iterable[sp.csr_matrix], codes: np.ndarray, n_batches: int, n_genes: int, input_kind: str,
    target_sum: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per batch and gene: sum and sum of squares of the log-normalized values, and detection count."""
    sums = np.zeros(n_batches * n_genes)
    squares = np.zeros(n_batches * n_genes)
    detected = np.zeros(n_batches * n_genes, dtype=np.int64)
    start = 0
    for chunk in chunks:
        if input_kind == "counts":
            chunk = log_normalize_sparse(chunk, target_sum, np.float64)
        lengths = np.diff(chunk.indptr)
        values = chunk.data.astype(np.float64)
        nonzero = values != 0
        keys = np.repeat(codes[start : start + chunk.shape[0]] * n_genes, lengths) + chunk.indices
        size = n_batches * n_genes
        sums += np.bincount(keys, weights=values, minlength=size)
        squares += np.bincount(keys, weights=values * values, minlength=size)
        detected += np.bincount(keys[nonzero], minlength=size)
        start += chunk.shape[0]
    shape = (n_batches, n_genes)
    return sums.reshape(shape), squares.reshape(shape), detected.reshape(shape)


def _standardized_dispersion(mean: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """``log(variance / mean)`` standardized within equal-size bins of ``mean`` (median / MAD)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        dispersion = np.log(variance / mean)
    dispersion[~np.isfinite(dispersion)] = -np.inf
    scores = np.full(mean.size, -np.inf)
    order = np.argsort(mean, kind="stable")
    bins = np.array_split(order, min(N_MEAN_BINS, mean.size))
    for members in bins:
        values = dispersion[members]
        finite = np.isfinite(values)
        if not finite.any():
            continue
        center = np.median(values[finite])
        spread = 1.4826 * np.median(np.abs(values[finite] - center))
        scores[members[finite]] = (values[finite] - center) / spread if spread > 0 else 0.0
    return scores
