"""Batch scoring of ``.h5ad`` files of any size: streamed in chunks, resumable, optionally on Dask.

A run (:func:`run_scoring`) goes like this:

1. Before any work: the output path is checked, the model is loaded, and every input is opened, its
   genes aligned to the model's (:meth:`Predictor.align`) and its values checked on a sample of its first
   :data:`SAMPLE_CELLS` cells (``--input auto`` detects the input kind there). Problems surface here with
   the same messages as the REST service, prefixed with the file's path.
2. Each input is cut into chunks of ``chunk_size`` cells (row ranges). A chunk is read straight from the
   HDF5 datasets in blocks of at most :data:`BLOCK_ROWS` cells, every stored value is checked (a bad value
   anywhere is an error naming the cell), and the block is scored by :meth:`Predictor.annotate`. Blocks
   are processed side by side on one thread per core (:func:`ordered_map`), each running torch on one
   intra-op thread. Memory therefore depends on the block size and the cores, never on the file size
   or the chunk size.
3. Each finished chunk's results are saved in a hidden work directory beside the output
   (``.OUT.partial/``) together with a small ``state.json`` identifying the run; ``--resume`` continues an
   interrupted run from the chunks found there, and refuses when the inputs, the model or the settings
   changed.
4. At the end the output is written inside the work directory and moved into place with one atomic
   rename, so a file at the output path is always complete.

With a Dask cluster (``workers`` or ``scheduler``) the chunks are scored by the workers: each worker
loads the model once (cached per worker process, keyed by the bundle's digest) and reads its row
ranges from the file itself; only paths, row ranges and the small results travel. Blocks never hold
fewer than :data:`MIN_FORWARD_ROWS` rows in a forward pass (short blocks are padded with empty cells),
so a cell's scores are bit-for-bit the same whatever the chunk size, the block it falls in, or the
worker that scores it.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from tqdm import tqdm

from model.bundle import UNKNOWN_LABEL, ModelBundle
from model.errors import GeneMismatchError, InputError, InputKindError
from model.genes import GeneAlignment
from model.predict import Predictor
from model.preprocessing import LOGNORM_MAX, as_matrix, check_values, detect_input_kind
from service.scoring_io import (
    CELL_ID_COLUMN,
    SOURCE_FILE_COLUMN,
    ChunkResult,
    H5adRows,
    ObsColumnsWriter,
    ResultColumns,
    RowBlock,
    ScoringError,
    TableWriter,
    output_suffix,
)

DEFAULT_CHUNK_SIZE = 65536
"""Cells per chunk: the unit of work that is checkpointed for ``--resume`` and sent to a Dask worker."""
BLOCK_ROWS = 1024
"""Cells read and scored at once within a chunk. Bounds memory (8 MB of model input for 2,000 genes); larger
blocks are slower on CPU, as their temporaries no longer fit the allocator's reuse threshold (page faults)."""
MIN_FORWARD_ROWS = 64
"""Shorter blocks are padded with empty cells: CPU matrix kernels round differently for a handful of rows."""
SAMPLE_CELLS = 10_000
"""Cells at the start of each input whose values are checked (and the input kind detected) up front."""
DEFAULT_TOP_K = 3
"""Top-k probability columns written by default."""
INPUT_KIND_CHOICES = ("auto", "counts", "lognorm")
"""``--input``: detect the kind from the first cells, or declare it."""
SCHEDULER_TIMEOUT_S = 10.0
"""Seconds to wait for a Dask scheduler given with ``--scheduler`` before calling it unreachable."""
STATE_FORMAT = "celltype-score-state/1"
"""Format tag of a work directory's ``state.json``."""
HEAP_RETAIN_BYTES = 256 << 20
"""glibc keeps up to this much freed memory for reuse instead of returning it to the system."""

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class ChunkTask:
    """One chunk to score: where to read it and how, never the data itself (cheap to send to a worker).

    Attributes:
        input_index: position of the input among the run's inputs.
        chunk_index: position of the chunk within its input.
        path: absolute path of the input file.
        layer: the layer to read, ``None`` for ``X``.
        start, stop: the chunk's rows, ``start .. stop - 1``.
        input_kind: ``"counts"`` or ``"lognorm"``.
        source_index: for each model gene, its column in the file (-1: missing), from :meth:`Predictor.align`.
        top_k: the requested top-k (see :class:`ResultColumns`).
    """

    input_index: int
    chunk_index: int
    path: str
    layer: str | None
    start: int
    stop: int
    input_kind: str
    source_index: np.ndarray = field(repr=False)
    top_k: int

    @property
    def n_cells(self) -> int:
        """Number of cells in the chunk."""
        return self.stop - self.start


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
        """The block's float32 values over the model's genes (CSR for CSR input, else dense)."""
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


def _plausible(values: np.ndarray, input_kind: str) -> bool:
    """Fast test that every value is fine for ``input_kind`` (False means: look closer)."""
    if values.size == 0:
        return True
    low, high = values.min(), values.max()
    if values.dtype.kind in "iu":
        return bool(low >= 0 and (input_kind == "counts" or high <= LOGNORM_MAX))
    if not (low >= 0 and high < np.inf):  # also False for NaN
        return False
    if input_kind == "lognorm":
        return bool(high <= LOGNORM_MAX)
    return bool(np.array_equal(np.rint(values), values))


def _suspicious(values: np.ndarray, input_kind: str) -> np.ndarray:
    """Mask of the values that may be wrong for ``input_kind`` (a superset of what check_values refuses)."""
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(values) | (values < 0)
        bad |= (np.rint(values) != values) if input_kind == "counts" else (values > LOGNORM_MAX)
    return bad


def _global_csr(block: RowBlock, rows: slice) -> sp.csr_matrix:
    """Rows of ``block`` as a CSR matrix preceded by empty rows, so that row numbers are the file's."""
    part = block.csr()[rows]
    first = block.start + (rows.start or 0)
    indptr = np.concatenate([np.zeros(first, dtype=np.int64), part.indptr.astype(np.int64)])
    return sp.csr_matrix(
        (part.data.astype(np.float32), part.indices, indptr), shape=(first + part.shape[0], part.shape[1])
    )


def check_block_values(block: RowBlock, input_kind: str, reader: H5adRows) -> None:
    """Raise :class:`InputKindError` naming the cell (file row and obs name) if a value is wrong for the kind.

    The common case costs a few vectorized passes; only a block that fails them is examined with
    :func:`model.preprocessing.check_values`, whose message (the service's) names the file's row.
    """
    if _plausible(block.values, input_kind):
        return
    try:
        check_values(_global_csr(block, slice(0, block.n_rows)), input_kind)
        return
    except InputKindError as exc:
        block_error = exc
    bad = _suspicious(block.values, input_kind)
    if block.is_sparse:
        rows = np.unique(np.searchsorted(block.indptr, np.flatnonzero(bad), side="right") - 1)
    else:
        rows = np.flatnonzero(bad.any(axis=1))
    for row in rows.tolist():
        try:
            check_values(_global_csr(block, slice(row, row + 1)), input_kind)
        except InputKindError as exc:
            cell = block.start + row
            name = reader.cell_ids(cell, cell + 1)[0]
            raise InputKindError(f"{reader.path}: {exc} (cell {cell} is obs name {name!r})") from None
    last = block.start + block.n_rows - 1
    raise InputKindError(f"{reader.path}: cells {block.start}..{last}: {block_error}") from None


def forward_rows() -> int:
    """The ``chunk_size`` of the Predictors used here: every (padded) block in one forward pass."""
    return max(BLOCK_ROWS, MIN_FORWARD_ROWS)


def _pad_rows(matrix: sp.csr_matrix | np.ndarray, n_rows: int) -> sp.csr_matrix | np.ndarray:
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


def _predict_block(
    predictor: Predictor, matrix: sp.csr_matrix | np.ndarray, input_kind: str, columns: ResultColumns
) -> ChunkResult:
    n_cells = matrix.shape[0]
    annotation = predictor.annotate(_pad_rows(matrix, MIN_FORWARD_ROWS), None, input_kind=input_kind)
    probabilities = annotation.probabilities[:n_cells]
    code_of = {label: code for code, label in enumerate(columns.label_categories)}
    codes = np.fromiter(
        (code_of[label] for label in annotation.labels[:n_cells]), dtype=np.int32, count=n_cells
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
        top_index=top_index,
        top_prob=top_prob,
        probabilities=probabilities if columns.per_class else np.zeros((n_cells, 0), dtype=np.float32),
    )


def keep_freed_memory() -> None:
    """Let glibc reuse freed memory instead of handing it back to the system after every block.

    Each forward pass allocates temporaries of several MB (a block's input is 8 MB). By default glibc maps
    such allocations fresh and unmaps them when freed, and Dask workers even trim the heap above 64 kB
    (``MALLOC_TRIM_THRESHOLD_``), so every block pays its page faults again: about a third of a worker's
    CPU time went to the kernel. Allocations up to 64 MB now come from the heap, which keeps up to
    :data:`HEAP_RETAIN_BYTES` of freed memory. Process-wide; a no-op where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameters from <malloc.h>
    libc.mallopt(m_mmap_threshold, 64 << 20)
    libc.mallopt(m_trim_threshold, HEAP_RETAIN_BYTES)


def scoring_threads() -> int:
    """Threads scoring blocks side by side in a single-process run: one per usable CPU core (at most 8)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cores))


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


@contextmanager
def torch_threads(n_threads: int) -> Iterator[None]:
    """Limit torch's intra-op threads to ``n_threads`` for the duration (restored afterwards)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


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
            return _predict_block(predictor, selector.select(block), task.input_kind, columns)
        except InputKindError as exc:  # the whole-number test of log-normalized values, on the whole block
            raise InputKindError(f"{reader.path}: cells {start}..{stop - 1}: {exc}") from None

    return ChunkResult.concat(
        list(ordered_map(score_block, range(task.start, task.stop, BLOCK_ROWS), threads))
    )


_WORKER_PREDICTORS: dict[tuple[str, str], Predictor] = {}
"""Per worker process: the loaded models, keyed by (bundle digest, device), so each is built once."""


def worker_predictor(bundle: ModelBundle, device: str) -> Predictor:
    """The Predictor for ``bundle`` in this process, built on first use and then reused."""
    key = (str(bundle.sha256), device)
    predictor = _WORKER_PREDICTORS.get(key)
    if predictor is None:
        keep_freed_memory()
        predictor = Predictor(bundle, device=device, chunk_size=forward_rows())
        _WORKER_PREDICTORS[key] = predictor
    return predictor


def score_chunk_on_worker(bundle: ModelBundle, task: ChunkTask, device: str) -> ChunkResult:
    """Dask task: score ``task`` with this worker's cached model, reading the rows from the file here."""
    predictor = worker_predictor(bundle, device)
    columns = ResultColumns(tuple(predictor.classes), task.top_k)
    with H5adRows(task.path, task.layer) as reader:
        return score_chunk(predictor, reader, task, columns)


@dataclass(frozen=True)
class ScoringJob:
    """What ``celltype score`` was asked to do.

    Attributes:
        inputs: the ``.h5ad`` files to score.
        model: a bundle directory or a registry URI (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``).
        out: the output file; its suffix picks the format (``.h5ad``, ``.csv``, ``.parquet``).
        chunk_size: cells per chunk (checkpoint and Dask unit).
        device: ``auto``, ``cpu`` or ``cuda``.
        resume: continue an interrupted run with the same settings.
        scheduler: address of a running Dask scheduler.
        workers: start a local Dask cluster with this many single-threaded worker processes.
        top_k: result columns (see :class:`ResultColumns`).
        input_kind: ``auto``, ``counts`` or ``lognorm``.
        layer: score ``layers[layer]`` instead of ``X``.
        tracking_uri: MLflow tracking URI for registry model URIs.
        progress: show a progress bar on stderr.
    """

    inputs: tuple[Path, ...]
    model: str
    out: Path
    chunk_size: int = DEFAULT_CHUNK_SIZE
    device: str = "auto"
    resume: bool = False
    scheduler: str | None = None
    workers: int | None = None
    top_k: int = DEFAULT_TOP_K
    input_kind: str = "auto"
    layer: str | None = None
    tracking_uri: str | None = None
    progress: bool = True

    @property
    def dask(self) -> bool:
        """True when the chunks are scored on a Dask cluster."""
        return bool(self.scheduler) or self.workers is not None


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


@dataclass(frozen=True)
class ScoringSummary:
    """What a finished run did.

    Attributes:
        output: the written file.
        n_cells: cells in the output.
        n_scored: cells scored by this run (fewer than ``n_cells`` after ``--resume``).
        label_counts: cells per predicted label, most frequent first.
        seconds: wall time of this run.
        inputs: per input: path, cells, input kind, whether detected, gene overlap.
    """

    output: Path
    n_cells: int
    n_scored: int
    label_counts: dict[str, int]
    seconds: float
    inputs: list[dict[str, Any]]

    @property
    def unknown_share(self) -> float:
        """Share of cells labelled ``"Unknown"``."""
        return self.label_counts.get(UNKNOWN_LABEL, 0) / self.n_cells if self.n_cells else 0.0

    @property
    def cells_per_second(self) -> float:
        """Cells scored by this run per second of its wall time."""
        return self.n_scored / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        """A human-readable report."""
        resumed = self.n_cells - self.n_scored
        lines = [
            f"scored {self.n_scored:,} cells in {self.seconds:.1f} s ({self.cells_per_second:,.0f} cells/s)"
            + (f"; {resumed:,} more were done by the interrupted run" if resumed else ""),
            f"wrote {self.n_cells:,} cells to {self.output}",
        ]
        for item in self.inputs:
            how = "detected" if item["detected"] else "declared"
            lines.append(
                f"  {item['path']}: {item['n_cells']:,} cells, {item['input_kind']} ({how}), "
                f"{item['genes_matched']}/{item['model_genes']} model genes found"
            )
        lines.append(f"unknown share: {self.unknown_share:.2%}")
        lines.append("labels:")
        for label, count in self.label_counts.items():
            share = count / self.n_cells if self.n_cells else 0.0
            lines.append(f"  {label}: {count:,} ({share:.1%})")
        return lines


class WorkDirectory:
    """The hidden directory beside the output holding an unfinished run: ``state.json`` and chunk results."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path = out.parent / f".{out.name}.partial"
        self.state_file = self.path / "state.json"
        self._lock: IO[str] | None = None

    def chunk_file(self, task: ChunkTask) -> Path:
        """Where the results of ``task`` are kept."""
        return self.path / f"chunk-{task.input_index:04d}-{task.chunk_index:07d}.npz"

    def temporary_output(self, out: Path) -> Path:
        """Where the output is assembled before its atomic move into place."""
        return self.path / f"output{out.suffix}"

    def open(self, key: dict[str, Any], resume: bool, tasks: list[ChunkTask]) -> set[tuple[int, int]]:
        """Create and lock the directory, or lock and check an existing one; return the finished chunks.

        Raises:
            ScoringError: another run is writing the same output; results of an interrupted run exist but
                ``resume`` is False, or they were made with other inputs, another model or other settings.
        """
        try:
            self.path.mkdir()
            created = True
        except FileExistsError:
            created = False
        except OSError as exc:
            raise ScoringError(f"cannot create the work directory {self.path}: {exc}") from None
        self._acquire()
        if created:
            try:
                temporary = self.state_file.with_name("state.json.tmp")
                temporary.write_text(json.dumps({"format": STATE_FORMAT, "key": key}, indent=2) + "\n")
                os.replace(temporary, self.state_file)
            except OSError as exc:
                self.remove()
                raise ScoringError(f"cannot write in the work directory {self.path}: {exc}") from None
            return set()
        if not resume:
            raise ScoringError(
                f"an interrupted run left partial results in {self.path}; add --resume to continue it, "
                "or delete that directory to start over"
            )
        self._check_key(key)
        return self._finished(tasks)

    def _acquire(self) -> None:
        """Take the directory's lock, so that two runs never write the same output at once."""
        handle = open(self.path / "lock", "a")  # noqa: SIM115 (held until release())
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ScoringError(
                f"another celltype score run is writing {self.out} right now; wait for it to finish"
            ) from None
        self._lock = handle

    def release(self) -> None:
        """Release the lock (the directory and its results stay)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _check_key(self, key: dict[str, Any]) -> None:
        try:
            state = json.loads(self.state_file.read_text())
            saved = state["key"] if state.get("format") == STATE_FORMAT else None
        except (OSError, ValueError, KeyError, TypeError):
            saved = None
        if not isinstance(saved, dict):
            raise ScoringError(
                f"cannot resume: {self.state_file} is missing or unreadable; delete {self.path} to start over"
            )
        changed = [name for name in key if saved.get(name) != key[name]]
        if changed:
            details = "; ".join(f"{name}: was {saved.get(name)!r}, now {key[name]!r}" for name in changed)
            raise ScoringError(
                f"cannot resume: the interrupted run in {self.path} used other settings ({details}); "
                f"run with the same inputs, model and settings, or delete {self.path} to start over"
            )

    def _finished(self, tasks: list[ChunkTask]) -> set[tuple[int, int]]:
        finished = set()
        for task in tasks:
            path = self.chunk_file(task)
            if not path.exists():
                continue
            try:
                complete = ChunkResult.load(path).n_cells == task.n_cells
            except (OSError, ValueError, KeyError):
                complete = False
            if complete:
                finished.add((task.input_index, task.chunk_index))
            else:
                path.unlink()
        return finished

    def remove(self) -> None:
        """Delete the directory and everything in it, and release the lock."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.release()

    def remove_if_empty(self) -> None:
        """Delete the directory unless it holds finished chunks worth resuming."""
        if not any(self.path.glob("chunk-*.npz")):
            self.remove()


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


def _check_job(job: ScoringJob, suffix: str) -> None:
    if not job.inputs:
        raise ScoringError("give at least one input .h5ad file")
    if job.input_kind not in INPUT_KIND_CHOICES:
        raise ScoringError(f"--input must be one of {', '.join(INPUT_KIND_CHOICES)}; got {job.input_kind!r}")
    if job.chunk_size < 1:
        raise ScoringError(f"--chunk-size must be a positive number of cells, got {job.chunk_size}")
    if job.workers is not None and job.workers < 1:
        raise ScoringError(f"--workers must be 1 or more, got {job.workers}")
    if job.workers is not None and job.scheduler:
        raise ScoringError(
            "give either --workers (a local Dask cluster) or --scheduler (a running one), not both"
        )
    if suffix == ".h5ad" and len(job.inputs) > 1:
        raise ScoringError(
            f"an .h5ad output annotates exactly one input, but {len(job.inputs)} were given; score them one by "
            "one, or write all cells to one table with --out OUT.csv or OUT.parquet"
        )
    resolved = {Path(p).resolve() for p in job.inputs}
    if job.out.resolve() in resolved:
        raise ScoringError(f"--out {job.out} is one of the inputs; write the results to a new file")
    directory = job.out.parent
    if not directory.is_dir():
        raise ScoringError(f"cannot write {job.out}: the directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ScoringError(f"cannot write {job.out}: the directory {directory} is not writable")


def _fingerprint(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _tasks(inputs: list[PreparedInput], job: ScoringJob) -> list[ChunkTask]:
    tasks = []
    for input_index, item in enumerate(inputs):
        for chunk_index, start in enumerate(range(0, item.reader.n_cells, job.chunk_size)):
            tasks.append(
                ChunkTask(
                    input_index=input_index,
                    chunk_index=chunk_index,
                    path=str(item.path.resolve()),
                    layer=job.layer,
                    start=start,
                    stop=min(start + job.chunk_size, item.reader.n_cells),
                    input_kind=item.input_kind,
                    source_index=item.alignment.source_index,
                    top_k=job.top_k,
                )
            )
    return tasks


def _score_locally(
    predictor: Predictor,
    inputs: list[PreparedInput],
    tasks: list[ChunkTask],
    columns: ResultColumns,
    on_result: Callable[[ChunkTask, ChunkResult], None],
) -> None:
    keep_freed_memory()
    threads = scoring_threads()
    with torch_threads(1 if threads > 1 else torch.get_num_threads()):
        for task in tasks:
            on_result(task, score_chunk(predictor, inputs[task.input_index].reader, task, columns, threads))


@contextmanager
def dask_client(scheduler: str | None, workers: int | None) -> Iterator[Any]:
    """A Dask client: connected to ``scheduler``, or to a new local cluster of ``workers`` processes.

    Raises:
        ScoringError: the scheduler cannot be reached.
    """
    # Imported here: only Dask runs pay for importing distributed.
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout=SCHEDULER_TIMEOUT_S)
        except (OSError, ValueError) as exc:
            raise ScoringError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
        with client:
            yield client
        return
    try:
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        )
    except RuntimeError as exc:
        raise ScoringError(f"cannot start a local Dask cluster of {workers} worker(s): {exc}") from None
    with cluster, Client(cluster) as client:
        yield client


def _score_on_dask(
    client: Any,
    bundle: ModelBundle,
    tasks: list[ChunkTask],
    device: str,
    on_result: Callable[[ChunkTask, ChunkResult], None],
) -> None:
    from distributed import KilledWorker, as_completed
    from distributed.comm import CommClosedError

    if not tasks:
        return
    bundle_future = client.scatter(bundle, broadcast=True)
    futures = {
        client.submit(score_chunk_on_worker, bundle_future, task, device, pure=False): task for task in tasks
    }
    try:
        for future in as_completed(futures):
            task = futures[future]
            try:
                result = future.result()
            except (KilledWorker, CommClosedError, OSError) as exc:
                raise ScoringError(
                    f"the Dask cluster failed while scoring cells {task.start}..{task.stop - 1} of {task.path} "
                    f"({type(exc).__name__}: {exc}); finished chunks are kept: rerun with --resume"
                ) from None
            on_result(task, result)
            future.release()
    finally:
        client.cancel(list(futures))


def _table(result: ChunkResult, columns: ResultColumns, cell_ids: np.ndarray, source: Path) -> pd.DataFrame:
    frame = result.frame(columns)
    frame.insert(0, SOURCE_FILE_COLUMN, np.full(result.n_cells, str(source), dtype=object))
    frame.insert(0, CELL_ID_COLUMN, cell_ids)
    return frame


def _write_output(
    job: ScoringJob,
    suffix: str,
    inputs: list[PreparedInput],
    tasks: list[ChunkTask],
    workdir: WorkDirectory,
    columns: ResultColumns,
) -> dict[str, int]:
    """Assemble the output from the saved chunks, move it into place; return label counts."""
    temporary = workdir.temporary_output(job.out)
    categories = columns.label_categories
    counts = np.zeros(len(categories), dtype=np.int64)
    try:
        if suffix == ".h5ad":
            writer: ObsColumnsWriter | TableWriter = ObsColumnsWriter(
                inputs[0].path, temporary, columns, inputs[0].reader.n_cells
            )
        else:
            writer = TableWriter(temporary, suffix)
        try:
            for task in tasks:
                result = ChunkResult.load(workdir.chunk_file(task))
                counts += np.bincount(result.label_codes, minlength=len(categories))
                if isinstance(writer, ObsColumnsWriter):
                    writer.write(task.start, result)
                else:
                    item = inputs[task.input_index]
                    writer.write(
                        _table(result, columns, item.reader.cell_ids(task.start, task.stop), item.path)
                    )
            if not tasks and isinstance(writer, TableWriter):
                writer.write(_table(ChunkResult.empty(columns), columns, np.array([], dtype=object), Path()))
        finally:
            writer.close()
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, job.out)
    except OSError as exc:
        raise ScoringError(f"cannot write {job.out}: {exc}") from None
    ranked = sorted(zip(categories, counts.tolist(), strict=True), key=lambda item: -item[1])
    return {label: count for label, count in ranked if count}


def run_scoring(job: ScoringJob) -> ScoringSummary:
    """Score every cell of ``job.inputs`` and write ``job.out``; see the module docstring for the steps.

    Raises:
        CellTypeError: (subclasses) with a message saying what to fix: unreadable input, gene mismatch,
            wrong input kind, unsupported or unwritable output, unreachable scheduler, stale resume state.
    """
    started = time.perf_counter()
    suffix = output_suffix(job.out)
    _check_job(job, suffix)
    predictor = Predictor.load(
        job.model, tracking_uri=job.tracking_uri, device=job.device, chunk_size=forward_rows()
    )
    columns = ResultColumns(tuple(predictor.classes), job.top_k)
    with ExitStack() as stack:
        inputs = []
        for path in job.inputs:
            item = prepare_input(Path(path), predictor, job.input_kind, job.layer)
            stack.callback(item.reader.close)
            inputs.append(item)
        tasks = _tasks(inputs, job)
        key = {
            "inputs": [_fingerprint(item.path) for item in inputs],
            "model_sha256": predictor.bundle.sha256,
            "chunk_size": job.chunk_size,
            "top_k": job.top_k,
            "input_kind": job.input_kind,
            "layer": job.layer,
        }
        client = stack.enter_context(dask_client(job.scheduler, job.workers)) if job.dask else None
        workdir = WorkDirectory(job.out)
        stack.callback(workdir.release)
        finished = workdir.open(key, job.resume, tasks)
        pending = [task for task in tasks if (task.input_index, task.chunk_index) not in finished]
        total = sum(task.n_cells for task in tasks)
        n_scored = sum(task.n_cells for task in pending)
        try:
            with tqdm(
                total=total,
                initial=total - n_scored,
                unit=" cells",
                unit_scale=True,
                disable=not job.progress,
                desc="scoring",
                dynamic_ncols=True,
            ) as bar:

                def on_result(task: ChunkTask, result: ChunkResult) -> None:
                    result.save(workdir.chunk_file(task))
                    bar.update(task.n_cells)

                if client is not None:
                    _score_on_dask(client, predictor.bundle, pending, str(job.device), on_result)
                else:
                    _score_locally(predictor, inputs, pending, columns, on_result)
            label_counts = _write_output(job, suffix, inputs, tasks, workdir, columns)
        except InputError:
            workdir.remove()  # the input has to change, so these partial results can never be resumed
            raise
        except BaseException:
            workdir.remove_if_empty()
            raise
        workdir.remove()
    return ScoringSummary(
        output=job.out,
        n_cells=total,
        n_scored=n_scored,
        label_counts=label_counts,
        seconds=time.perf_counter() - started,
        inputs=[
            {
                "path": str(item.path),
                "n_cells": item.reader.n_cells,
                "input_kind": item.input_kind,
                "detected": item.detected,
                "genes_matched": item.alignment.n_matched,
                "model_genes": item.alignment.n_model_genes,
            }
            for item in inputs
        ],
    )
