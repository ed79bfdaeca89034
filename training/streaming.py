"""Training from ``.h5ad`` files left on disk: :class:`DiskLabeledData`, the data-mode choice, prefetching.

When the cells do not fit in memory, ``celltype train`` does not read the matrix at once
(:func:`training.data.load_labeled`) but opens the files (:func:`open_labeled`) and reads rows when
they are needed, so that no value is held in memory (only the per-cell annotations are kept: labels,
batches, cell names, row numbers; at 2M cells about 0.7 KB a cell at their peak, reached while the
files are opened, see ``docs/benchmarks.md``):

- gene selection is one streaming pass over the training rows in row blocks
  (:func:`training.genes.select_genes`);
- mini-batches come from windows of contiguous row blocks: the shuffled and lab-homogeneous samplers
  run in block mode (:mod:`training.samplers`, ``block_rows``), and :class:`PrefetchingSampler` reads
  the windows in a background thread and computes each mini-batch's dense model input there, ahead of
  the training thread, which only takes it (it prints how often it had to wait);
- input statistics, validation, held-out scoring and the final norm recalibration read sorted rows in
  blocks (on the calling thread).

Reading: a view (:meth:`DiskLabeledData.select_genes`) maps each file's columns to its genes through a
table made once; a read of neighbouring rows is one h5py slice of at most :data:`READ_ROWS` rows, whose
stored values are kept or dropped with one gather over that table (none when the view keeps every
column, as gene selection does).

Identical weights: the values read from disk are the very values the in-memory path holds, and the
model input is computed by the same function, so for the same seed and the same mini-batch order the
weights are identical (``tests/training/test_streaming.py`` checks it). The order is the same when both
paths use block sampling (``sampler_block_rows`` set explicitly), or when the disk path draws rows one
by one (any sampler with ``sampler_block_rows`` left at 0 on data that does not get block mode, e.g.
``class_balanced``). With the defaults the orders differ: in memory the shuffled and lab-homogeneous
samplers shuffle single cells, on disk they shuffle blocks of :data:`DEFAULT_BLOCK_ROWS` rows (reading
single random rows from a file is far too slow), so the weights then differ as two seeds do.

The data mode (``data_mode``: ``auto``, ``memory``, ``disk``): ``auto`` trains from disk when the
in-memory path would need more than :data:`MEMORY_FRACTION` of the available memory;
:func:`choose_data_mode` says which it chose and why, in one line that ``celltype train`` prints.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np
import scipy.sparse as sp

from model.errors import InputError, InputKindError
from model.preprocessing import Preprocessing, check_values, to_model_input
from training.data import (
    _KIND_NAMES,
    CellAnnotations,
    DataReport,
    _as_paths,
    _available_memory_bytes,
    _check_batch_names,
    _matrix_key,
    _shared_genes,
    _Source,
    _unique_cell_ids,
    loading_report,
    open_hdf5,
)
from training.gene_identifiers import shared_identifiers

INPUT_CACHE_BYTES = 1 << 30
"""Training inputs up to this size are computed once and kept as a dense tensor by the trainer; larger
ones per batch (the memory estimate of :func:`choose_data_mode` counts it)."""

DATA_MODES = ("auto", "memory", "disk")
"""Where training reads its cells from: chosen from the sizes, all in memory, or from the files."""

MEMORY_FRACTION = 0.5
"""``auto`` trains in memory when the in-memory path needs at most this share of the available memory."""

DEFAULT_BLOCK_ROWS = 1024
"""Rows per contiguous block of the block-mode samplers when training from disk."""

WINDOW_BLOCKS = 32
"""Blocks per window: a mini-batch mixes the cells of this many blocks."""

READ_ROWS = 4096
"""At most this many rows per read from a file (bounds the buffer over all of a file's genes)."""

GAP_ROWS = 64
"""Rows between two wanted rows that are read through rather than starting a new read."""

PREFETCH_BYTES = 64 << 20
"""Model inputs of mini-batches made ready ahead by the background reader, at most this many bytes
(and at least :data:`PREFETCH_MIN_BATCHES` mini-batches)."""

PREFETCH_MIN_BATCHES = 4
"""Mini-batches made ready ahead by the background reader, at least."""


@dataclass(frozen=True)
class DataModeChoice:
    """Which data mode a run uses, and the sizes it was chosen from.

    Attributes:
        mode: ``"memory"`` or ``"disk"``.
        requested: the configured ``data_mode`` (``auto``, ``memory`` or ``disk``).
        n_cells, n_genes: cells and genes (before gene selection) in the files.
        need_bytes: estimated peak memory of the in-memory path.
        available_bytes: memory available when the choice was made.
    """

    mode: str
    requested: str
    n_cells: int
    n_genes: int
    need_bytes: int
    available_bytes: int

    def message(self) -> str:
        """One line for the log, e.g. ``training from disk: 2,000,000 cells x 20,000 genes need ...``."""
        where = "from disk" if self.mode == "disk" else "in memory"
        reason = "chosen from the sizes" if self.requested == "auto" else "as configured"
        return (
            f"training {where}: {self.n_cells:,} cells x {self.n_genes:,} genes need {_gib(self.need_bytes)} in "
            f"memory, {_gib(self.available_bytes)} available (data_mode={self.requested}, {reason})"
        )


def choose_data_mode(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    requested: str = "auto",
    *,
    layer: str | None = None,
    available_bytes: int | None = None,
) -> DataModeChoice:
    """Decide whether to train in memory or from disk (see the module docstring).

    The in-memory need is estimated from the files' stored values: twice the float32 CSR matrix
    (the matrix and the training subset copied from it) plus the trainer's dense input cache (float32
    cells x genes, at most :data:`INPUT_CACHE_BYTES`).

    Raises:
        ValueError: ``requested`` is not one of :data:`DATA_MODES`.
        InputError: a file is missing or is not an ``.h5ad`` file.
    """
    if requested not in DATA_MODES:
        raise ValueError(f"data_mode must be one of {', '.join(DATA_MODES)} (got {requested!r})")
    n_cells = n_genes = stored = 0
    for path in _as_paths(paths):
        with open_hdf5(path) as handle:
            element = handle[_matrix_key(path, handle, layer)]
            if isinstance(element, h5py.Dataset):
                rows, cols = (int(n) for n in element.shape)
                stored += rows * cols
            else:
                shape = element.attrs.get("shape", element.attrs.get("h5sparse_shape"))
                if shape is None or "data" not in element:
                    raise InputError(f"{path}: its matrix is not stored as anndata writes it (no shape or data)")
                rows, cols = (int(n) for n in shape)
                stored += int(element["data"].shape[0])
        n_cells += rows
        n_genes = max(n_genes, cols)
    need = 2 * (8 * stored + 8 * n_cells) + min(INPUT_CACHE_BYTES, 4 * n_cells * n_genes)
    available = _available_memory_bytes() if available_bytes is None else available_bytes
    mode = requested if requested != "auto" else ("memory" if need <= MEMORY_FRACTION * available else "disk")
    return DataModeChoice(mode, requested, n_cells, n_genes, need, available)


@dataclass
class _Files:
    """The open files of a :class:`DiskLabeledData`, shared by its views (subsets, gene selections)."""

    sources: list[_Source]
    handles: list[h5py.File]
    offsets: np.ndarray  # first global row of each file, then the total
    lock: threading.Lock = field(default_factory=threading.Lock)

    def close(self) -> None:
        for handle in self.handles:
            handle.close()


class DiskLabeledData(CellAnnotations):
    """Labeled cells whose values stay in their ``.h5ad`` files: :class:`training.data.LabeledData`'s
    interface (``genes``, ``labels``, ``batches``, ``cell_ids``, ``input_kind``, ``subset``,
    ``select_genes``, ``model_input``), reading rows only when asked.

    ``subset`` and ``select_genes`` return views over the same open files. Rows are read sorted,
    neighbouring rows in one read of at most :data:`READ_ROWS` rows; each view maps the files' columns
    to its genes through a table made once per file. The model input of the mini-batch that
    :class:`PrefetchingSampler` made ready in its background thread is served as it is.
    """

    def __init__(
        self,
        files: _Files,
        genes: list[str],
        columns: list[np.ndarray],
        rows: np.ndarray,
        labels: np.ndarray,
        batches: np.ndarray,
        cell_ids: np.ndarray,
        input_kind: str,
        gene_identifiers: dict[str, list[str]],
    ) -> None:
        self._files = files
        self.genes = genes
        self._columns = columns
        self._rows = rows
        self.labels = labels
        self.batches = batches
        self.cell_ids = cell_ids
        self.input_kind = input_kind
        self.gene_identifiers = gene_identifiers
        self.sources = [s.name for s in files.sources]
        self._targets: list[np.ndarray | None] = [None] * len(columns)
        self._ready: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def n_cells(self) -> int:
        """Number of cells (rows)."""
        return len(self._rows)

    @property
    def X(self) -> _RowReader:  # noqa: N802 - LabeledData's name for its matrix
        """Row access like :attr:`LabeledData.X` (``data.X[rows]`` reads those rows as CSR)."""
        return _RowReader(self)

    @property
    def preprocessing(self) -> Preprocessing:
        """How a model trained on these cells turns values into its input (as :class:`LabeledData`)."""
        return Preprocessing(input_kind=self.input_kind)

    def close(self) -> None:
        """Close the files (of every view)."""
        self._files.close()

    def subset(self, cells: np.ndarray | Sequence[int] | Sequence[bool]) -> DiskLabeledData:
        """A view of the cells selected by an integer index or a boolean mask, in that order."""
        index = np.asarray(cells)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        index = index.astype(np.int64)
        view = DiskLabeledData(
            self._files, self.genes, self._columns, self._rows[index], self.labels[index], self.batches[index],
            self.cell_ids[index], self.input_kind, self.gene_identifiers,
        )
        view._targets = self._targets  # same genes: same column tables
        return view

    def select_genes(self, genes: Sequence[str]) -> DiskLabeledData:
        """A view over the columns named ``genes``, in that order.

        Raises:
            GeneMismatchError: a gene is not in the data, or is requested twice (as :class:`LabeledData`).
        """
        from training.data import LabeledData  # its checks and messages, on an empty stand-in matrix

        stand_in = LabeledData(
            X=sp.csr_matrix((0, self.n_genes), dtype=np.float32), genes=self.genes,
            labels=np.empty(0, dtype=str), batches=np.empty(0, dtype=str), cell_ids=np.empty(0, dtype=str),
            input_kind=self.input_kind, gene_identifiers=self.gene_identifiers,
        ).select_genes(genes)
        position = {g: i for i, g in enumerate(self.genes)}
        picked = np.fromiter((position[g] for g in stand_in.genes), dtype=np.int64, count=len(stand_in.genes))
        return DiskLabeledData(
            self._files, stand_in.genes, [c[picked] for c in self._columns], self._rows, self.labels,
            self.batches, self.cell_ids, self.input_kind, stand_in.gene_identifiers,
        )

    # -- reading ------------------------------------------------------------------------------

    def read_rows(self, rows: np.ndarray | Sequence[int] | slice) -> sp.csr_matrix:
        """Float32 CSR values of ``rows`` (of this view) over its genes, read from the files."""
        local = np.arange(*rows.indices(self.n_cells)) if isinstance(rows, slice) else np.asarray(rows, dtype=np.int64)
        wanted = self._rows[local]
        if wanted.size and bool(np.all(wanted[1:] > wanted[:-1])):  # sorted and distinct: the usual case
            return self._read_sorted(wanted)
        unique, inverse = np.unique(wanted, return_inverse=True)
        return self._read_sorted(unique)[inverse.reshape(-1)]

    def model_input(self, rows: np.ndarray | Sequence[int] | slice) -> np.ndarray:
        """Dense float32 model input of ``rows``: exactly :meth:`LabeledData.model_input` of the same cells
        (the mini-batch made ready by :class:`PrefetchingSampler` is served as it is, else read now)."""
        ready = self._ready
        if ready is not None and not isinstance(rows, slice):
            wanted = np.asarray(rows, dtype=np.int64)
            if wanted.shape == ready[0].shape and np.array_equal(wanted, ready[0]):
                self._ready = None
                return ready[1]
        return self._model_input(self.read_rows(rows))

    def _model_input(self, values: sp.csr_matrix) -> np.ndarray:
        """Dense model input of CSR rows (the one computation, on disk as in memory)."""
        dense = values.toarray()
        if dense.dtype != np.float32:
            dense = dense.astype(np.float32)
        preprocessing = self.preprocessing
        return to_model_input(dense, preprocessing.input_kind, preprocessing.target_sum)

    def serve(self, rows: np.ndarray | None, inputs: np.ndarray | None) -> None:
        """Have the next ``model_input(rows)`` return ``inputs`` (made ready ahead); ``None`` forgets it."""
        self._ready = None if rows is None or inputs is None else (np.asarray(rows, dtype=np.int64), inputs)

    def row_blocks(self, rows_per_block: int, *, check: bool = True) -> Iterator[sp.csr_matrix]:
        """Every row of the view in order, ``rows_per_block`` rows at a time (one streaming pass, the
        next block read in a background thread while the caller works on the current one); with
        ``check``, each block's values are checked against ``input_kind``.

        Raises:
            InputKindError: a block holds values of another kind (NaN, negative, non-integer counts).
        """

        def blocks() -> Iterator[sp.csr_matrix]:
            for start in range(0, self.n_cells, rows_per_block):
                block = self.read_rows(slice(start, start + rows_per_block))
                if check:
                    try:
                        check_values(block, self.input_kind)
                    except InputKindError as exc:
                        raise InputKindError(
                            f"cells {start}-{start + block.shape[0] - 1} of the training cells: {exc} (the files "
                            f"were detected as {_KIND_NAMES[self.input_kind]} from a sample of their rows)"
                        ) from None
                yield block

        return _read_ahead(blocks(), depth=1)

    def _target(self, index: int) -> np.ndarray | None:
        """File ``index``'s column -> this view's gene position table (-1: not a gene of the view);
        ``None`` when the view holds the file's columns as they are (nothing to map)."""
        target = self._targets[index]
        if target is None:
            columns = self._columns[index]
            n_file_genes = len(self._files.sources[index].genes)
            if len(columns) == n_file_genes and bool(np.array_equal(columns, np.arange(n_file_genes))):
                target = np.empty(0, dtype=np.int32)  # identity
            else:
                target = np.full(n_file_genes, -1, dtype=np.int32)
                target[columns] = np.arange(len(columns), dtype=np.int32)
            self._targets[index] = target
        return None if target.size == 0 else target

    def _read_span(self, index: int, lo: int, hi: int) -> sp.csr_matrix:
        """Rows ``lo .. hi - 1`` of file ``index`` over this view's genes (float32 CSR): one read."""
        source = self._files.sources[index]
        with self._files.lock:  # h5py is not safe for concurrent reads of one file
            block = source.rows.read(lo, hi)
        target = self._target(index)
        if not block.is_sparse:
            return block.csr(self._columns[index])
        if target is None:
            return block.csr()
        mapped = target[block.indices]
        kept = np.flatnonzero(mapped >= 0)
        values = block.values[kept]
        if values.dtype != np.float32:
            values = values.astype(np.float32)
        index_dtype = np.int32 if kept.size < np.iinfo(np.int32).max else np.int64
        indptr = np.searchsorted(kept, block.indptr).astype(index_dtype)
        return sp.csr_matrix((values, mapped[kept].astype(index_dtype), indptr), shape=(hi - lo, self.n_genes))

    def _read_sorted(self, wanted: np.ndarray) -> sp.csr_matrix:
        """Rows ``wanted`` (global, sorted, unique) over this view's genes, read in spans."""
        files = self._files
        parts: list[sp.csr_matrix] = []
        bounds = np.searchsorted(wanted, files.offsets)
        for index in np.flatnonzero(np.diff(bounds)):
            local = wanted[bounds[index] : bounds[index + 1]] - files.offsets[index]
            breaks = np.flatnonzero(np.diff(local) > GAP_ROWS) + 1
            for run in np.split(local, breaks):
                first, last = int(run[0]), int(run[-1])
                for lo in range(first, last + 1, READ_ROWS):
                    hi = min(lo + READ_ROWS, last + 1)
                    take = run[np.searchsorted(run, lo) : np.searchsorted(run, hi)] - lo
                    if take.size == 0:
                        continue
                    block = self._read_span(int(index), lo, hi)
                    parts.append(block if take.size == hi - lo else block[take])
        if not parts:
            return sp.csr_matrix((0, self.n_genes), dtype=np.float32)
        if len(parts) == 1:
            return parts[0]
        return sp.vstack(parts, format="csr", dtype=np.float32)


class _RowReader:
    """``DiskLabeledData.X``: ``X[rows]`` reads those rows (CSR over the data's genes); ``shape``."""

    def __init__(self, data: DiskLabeledData) -> None:
        self.data = data
        self.shape = (data.n_cells, data.n_genes)

    def __getitem__(self, rows: np.ndarray | Sequence[int] | slice) -> sp.csr_matrix:
        return self.data.read_rows(rows)


def open_labeled(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    label_key: str = "cell_type",
    batch_key: str = "batch",
    layer: str | None = None,
    min_cells_per_class: int = 10,
) -> tuple[DiskLabeledData, DataReport]:
    """Open labeled ``.h5ad`` files for training from disk: :func:`training.data.load_labeled`'s rules
    and report (genes intersected, batches, kinds detected on a sample), but the values stay in the
    files; the training rows are checked against the detected kind as the gene selection pass reads
    them (:meth:`DiskLabeledData.row_blocks` with ``check=True``).

    Raises:
        InputError: as :func:`training.data.load_labeled`.
    """
    files = _as_paths(paths)
    handles: list[h5py.File] = []
    try:
        for path in files:
            handles.append(open_hdf5(path))
        sources = [
            _Source.open(path, handle, label_key=label_key, batch_key=batch_key, layer=layer, single=len(files) == 1)
            for path, handle in zip(files, handles, strict=True)
        ]
        kinds = {s.name: s.detect_kind() for s in sources}
    except BaseException:
        for handle in handles:
            handle.close()
        raise
    if len(set(kinds.values())) > 1:
        for handle in handles:
            handle.close()
        listing = ", ".join(f"{name}: {_KIND_NAMES[k]}" for name, k in kinds.items())
        raise InputKindError(
            f"the files hold different kinds of values ({listing}); give files of one kind, e.g. "
            "the raw counts of every file (layer='counts' or layer='X', whichever holds them)"
        )
    input_kind = next(iter(kinds.values()))
    warnings: list[str] = []
    genes = _shared_genes(sources, warnings)
    columns = []
    for s in sources:
        s.backed = True
        position = {g: i for i, g in enumerate(s.genes)}
        columns.append(np.fromiter((position[g] for g in genes), dtype=np.int64, count=len(genes)))
        if s.encoding == "csc_matrix":
            warnings.append(
                f"{s.name}: {s.matrix_key} is stored column-wise (CSC), so every row read re-reads the whole "
                "matrix; store it as CSR to train from disk"
            )
    offsets = np.concatenate([[0], np.cumsum([s.n_rows for s in sources])]).astype(np.int64)
    cell_ids = _unique_cell_ids(sources, warnings)
    _check_batch_names(sources, warnings)
    data = DiskLabeledData(
        _Files(sources, handles, offsets), genes, columns, np.arange(offsets[-1], dtype=np.int64),
        np.concatenate([s.labels for s in sources]), np.concatenate([s.batches for s in sources]), cell_ids,
        input_kind, shared_identifiers([(s.genes, s.identifier_columns) for s in sources], genes),
    )
    return data, loading_report(data, sources, warnings, min_cells_per_class)


class PrefetchingSampler:
    """A trainer's sampler whose mini-batches' model inputs are made ready in a background thread.

    ``batches(epoch)`` returns the wrapped sampler's mini-batches (positions in ``train_rows``) as an
    iterable. While the training thread steps, a background thread reads the epoch's rows window by
    window (each window in one pass of sorted reads) and computes, in the epoch's order, the model input
    of each mini-batch (:meth:`DiskLabeledData.model_input`'s computation); before a mini-batch is handed
    out, its input is given to ``data`` (:meth:`DiskLabeledData.serve`), so the trainer's
    ``data.model_input(rows)`` costs nothing. The windows are the sampler's blocks
    (:meth:`training.samplers.Sampler.windows`), or for a sampler without blocks consecutive mini-batches
    of about ``window_rows`` rows together. At most ``prefetch_bytes`` of inputs (and at least
    :data:`PREFETCH_MIN_BATCHES` mini-batches) wait ready; the reader holds the window in use and at
    most the next one.

    Args:
        sampler: the trainer's sampler.
        data: the trainer's data (rows of ``train_rows`` index it).
        train_rows: the trainer's training rows.
        window_rows: rows per window for a sampler without blocks.
        prefetch_bytes: bound on the inputs made ready ahead.
        echo: print one line after each epoch: mini-batches, windows, and how often and how long the
            training thread waited for the reader (it should not: reading is meant to hide behind the steps).
    """

    def __init__(
        self,
        sampler: Any,
        data: DiskLabeledData,
        train_rows: np.ndarray,
        *,
        window_rows: int = DEFAULT_BLOCK_ROWS * WINDOW_BLOCKS,
        prefetch_bytes: int = PREFETCH_BYTES,
        echo: bool = False,
    ) -> None:
        self.sampler = sampler
        self.echo = echo
        self.data = data
        self.train_rows = np.asarray(train_rows, dtype=np.int64)
        self.window_rows = window_rows
        self.prefetch_bytes = prefetch_bytes

    def __len__(self) -> int:
        return len(self.sampler)

    def batches(self, epoch: int) -> _Epoch:
        """The epoch's mini-batches, with their inputs made ready ahead while iterating."""
        batches = self.sampler.batches(epoch)
        windows = self.sampler.windows(epoch)
        if windows is None:
            windows = _group_windows(batches, self.window_rows, len(self.train_rows))
        return _Epoch(self, batches, windows)


class _Epoch:
    """One epoch of :class:`PrefetchingSampler`: iterate to train; a background thread reads ahead."""

    def __init__(self, owner: PrefetchingSampler, batches: list[np.ndarray], windows: list[np.ndarray]) -> None:
        self.owner = owner
        self.batches = batches
        self.windows = windows

    def __len__(self) -> int:
        return len(self.batches)

    def _depth(self) -> int:
        largest = max((len(b) for b in self.batches), default=1)
        per_batch = max(1, largest * self.owner.data.n_genes * 4)
        return max(PREFETCH_MIN_BATCHES, self.owner.prefetch_bytes // per_batch)

    def _inputs(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(rows, model input) of each mini-batch in order, reading the windows as they are needed."""
        owner, data = self.owner, self.owner.data
        window_of = np.full(len(owner.train_rows), -1, dtype=np.int64)
        for key, positions in enumerate(self.windows):
            window_of[positions] = key
        loaded: dict[int, tuple[np.ndarray, sp.csr_matrix]] = {}  # key -> (sorted positions, their CSR rows)
        next_key = 0
        for batch in self.batches:
            batch = np.asarray(batch, dtype=np.int64)
            keys = window_of[batch]
            first, last = int(keys.min()), int(keys.max())
            for key in [k for k in loaded if k < first]:
                del loaded[key]
            while next_key <= last:
                positions = np.sort(self.windows[next_key])
                loaded[next_key] = (positions, data.read_rows(owner.train_rows[positions]))
                next_key += 1
            if first == last and first in loaded:
                positions, values = loaded[first]
                rows = values[np.searchsorted(positions, batch)]
            else:
                order = np.argsort(keys, kind="stable")
                parts = []
                for key in np.unique(keys):
                    members = batch[keys == key]
                    if int(key) in loaded:
                        positions, values = loaded[int(key)]
                        parts.append(values[np.searchsorted(positions, members)])
                    else:  # a window already dropped (samplers drawing a row again later): read those rows
                        parts.append(data.read_rows(owner.train_rows[members]))
                rows = sp.vstack(parts, format="csr")[np.argsort(order, kind="stable")]
            yield owner.train_rows[batch], data._model_input(rows)

    def __iter__(self) -> Iterator[np.ndarray]:
        owner, data = self.owner, self.owner.data
        ready = _read_ahead(self._inputs(), depth=self._depth())
        waits, wait_seconds, served = 0, 0.0, 0
        try:
            for batch in self.batches:
                started = time.perf_counter()
                waited = ready.waiting()
                rows, inputs = next(ready)
                if waited:
                    waits += 1
                    wait_seconds += time.perf_counter() - started
                data.serve(rows, inputs)
                served += 1
                yield batch
        finally:
            ready.close()
            data.serve(None, None)
            if owner.echo and served:
                print(
                    f"read ahead from disk: {served:,} mini-batches, {len(self.windows):,} windows; training waited "
                    f"for {waits:,} of them ({wait_seconds:.1f} s)", flush=True,
                )


class _read_ahead(Iterator[Any]):  # noqa: N801 - used like a function
    """Iterate ``items`` in a background thread, at most ``depth`` items ahead of the caller; an
    exception raised there is raised here. ``close()`` (or the end) stops the thread."""

    def __init__(self, items: Iterator[Any], depth: int) -> None:
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(max(1, depth))
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, args=(items,), name="celltype-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: tuple[str, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, items: Iterator[Any]) -> None:
        try:
            for item in items:
                if not self._put(("item", item)):
                    return
            self._put(("end", None))
        except BaseException as exc:  # handed to the caller, which raises it
            self._put(("error", exc))

    def waiting(self) -> bool:
        """True when nothing is ready yet (the next ``next`` will wait for the thread)."""
        return self._queue.empty()

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        kind, value = self._queue.get()
        if kind == "item":
            return value
        self.close()
        if kind == "error":
            raise value
        raise StopIteration

    def close(self) -> None:
        """Stop the background thread (waiting for the item it is computing) and drop what is ready."""
        self._done = True
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
        self._thread.join()

    def __del__(self) -> None:
        self._stop.set()


def _group_windows(batches: list[np.ndarray], window_rows: int, n_positions: int) -> list[np.ndarray]:
    """Consecutive mini-batches gathered into windows of about ``window_rows`` rows (each row in the
    first window that uses it)."""
    windows: list[np.ndarray] = []
    seen = np.zeros(n_positions, dtype=bool)
    current: list[np.ndarray] = []
    size = 0
    for index, batch in enumerate(batches):
        current.append(np.asarray(batch, dtype=np.int64))
        size += len(batch)
        if size >= window_rows or index == len(batches) - 1:
            rows = np.unique(np.concatenate(current))
            fresh = rows[~seen[rows]]
            seen[fresh] = True
            if fresh.size:
                windows.append(fresh)
            current, size = [], 0
    return windows


def streaming_setup(data: DiskLabeledData | Any, block_rows: int) -> Any:
    """A ``configure_trainer`` hook for :func:`training.pipeline.train_model`.

    For data on disk, and for any data when ``block_rows > 0``: the trainer's shuffled or
    lab-homogeneous sampler is rebuilt in block mode (``block_rows``, or :data:`DEFAULT_BLOCK_ROWS`
    on disk when 0), with the same number of mini-batches per epoch; on disk it is then wrapped in a
    :class:`PrefetchingSampler` (unless the trainer keeps every training input in its dense cache).
    Returns ``None`` when there is nothing to change.
    """
    on_disk = isinstance(data, DiskLabeledData)
    if not on_disk and block_rows <= 0:
        return None

    def configure(trainer: Any) -> None:
        from training.samplers import LabHomogeneousSampler, ShuffledSampler, make_sampler

        sampler = trainer.sampler
        rows = block_rows if block_rows > 0 else DEFAULT_BLOCK_ROWS
        if isinstance(sampler, ShuffledSampler | LabHomogeneousSampler):
            name = "shuffled" if isinstance(sampler, ShuffledSampler) else "lab_homogeneous"
            options: dict[str, Any] = {"block_rows": rows, "window_blocks": WINDOW_BLOCKS}
            if isinstance(sampler, LabHomogeneousSampler):
                options["interleave"] = sampler.interleave
            config = trainer.config
            sampler = make_sampler(
                name, labels=np.asarray(trainer.data.labels)[trainer.train_rows],
                batches=np.asarray(trainer.data.batches)[trainer.train_rows], batch_size=config.batch_size,
                seed=config.seed, rank=sampler.rank, world_size=sampler.world_size, **options,
            )
        if isinstance(trainer.data, DiskLabeledData) and getattr(trainer, "_cache", None) is None:
            # (a trainer that holds every training input in its cache reads nothing while it trains)
            sampler = PrefetchingSampler(sampler, trainer.data, trainer.train_rows, echo=trainer.rank == 0)
        trainer.sampler = sampler

    return configure


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.1f} GiB"

