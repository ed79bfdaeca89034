"""Reading labeled multi-lab single-cell data (``.h5ad``) for training.

:func:`load_labeled` reads one ``.h5ad`` file with a batch column, or several files (one per lab), into
one :class:`LabeledData` (cells x genes, CSR) and a :class:`DataReport` that says what was read: how
many cells per class and batch, which classes only one lab contributed (the model cannot tell biology
from lab there), which are rare, how many genes each file had and how many the files did not share.

Reading rules:

- Values: ``layers['counts']`` when the file has it, else ``X``; ``layer=`` picks one (``"X"`` or a
  layer name). Whether they are raw counts or log-normalized is detected with
  :func:`model.preprocessing.detect_input_kind` on a sample of rows of each file; files of different
  kinds are refused, and every row read is then checked against the detected kind
  (:func:`model.preprocessing.check_values`), so NaN, negative or mixed values never pass silently.
- Memory: sparse matrices stay sparse (a dense ``X`` is converted to CSR). A file whose matrix would
  take more than :data:`BACKED_MEMORY_FRACTION` of the available memory (or any file when
  ``backed=True``) is read the way anndata's backed mode (``backed="r"``) reads it: straight from the
  HDF5 file with the project's one row reader, :class:`model.h5ad.H5adRows` (which checks each block's
  CSR structure as it reads it), in row chunks that are column-subset, checked and appended to one preallocated CSR one at a time: memory holds the
  result plus one chunk, never a dense copy and never the matrix twice.
- Genes: the files' genes are intersected (in the first file's order); the report says how many genes
  each file had and how many of them were dropped. Duplicated gene names in a file are refused (which
  of two same-named columns is meant cannot be guessed).
- Batches: a single file must have the batch column; with several files, a file without it is one
  batch named after the file's stem.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata.io import read_elem

from model.errors import GeneMismatchError, InputError, InputKindError
from model.genes import identifier_columns
from model.h5ad import H5adRows, decode_text
from model.preprocessing import Preprocessing, check_values, detect_input_kind, to_model_input
from training.gene_identifiers import shared_identifiers

BACKED_MEMORY_FRACTION = 0.25
"""With ``backed="auto"``, a file is read in row chunks when its matrix needs more than this share of
the available memory."""

CHUNK_BYTES = 64 * 2**20
"""Target in-memory size of one row chunk in backed mode (unless ``chunk_rows`` is given)."""

CHECK_VALUES = 1 << 24
"""Stored values checked at a time (bounds the temporary arrays of the value checks)."""

DETECTION_SAMPLE_ROWS = 4000
"""Rows per file (in up to four evenly spaced blocks) on which the input kind is detected."""

_BUNDLED_CELLBENCH = Path(__file__).parent / "datasets" / "cellbench.h5ad"

_KIND_NAMES = {"counts": "raw counts", "lognorm": "log-normalized values"}


class CellAnnotations:
    """What :class:`LabeledData` and :class:`training.streaming.DiskLabeledData` derive alike from their
    ``genes``, ``labels`` and ``batches``."""

    genes: list[str]
    labels: np.ndarray
    batches: np.ndarray

    @property
    def n_genes(self) -> int:
        """Number of genes (columns)."""
        return len(self.genes)

    @property
    def classes(self) -> list[str]:
        """The cell types present, sorted."""
        return [str(c) for c in np.unique(self.labels)]

    @property
    def batch_names(self) -> list[str]:
        """The batches present, sorted."""
        return [str(b) for b in np.unique(self.batches)]


@dataclass
class LabeledData(CellAnnotations):
    """Labeled cells x genes from one or more labs, ready for training.

    Attributes:
        X: ``(n_cells, n_genes)`` float32 CSR matrix of the values as given (raw counts or
            log-normalized, see ``input_kind``).
        genes: gene names of the columns of ``X``.
        labels: cell type of each cell (str).
        batches: batch (lab, protocol, donor) of each cell (str).
        cell_ids: identifier of each cell (str).
        input_kind: ``"counts"`` or ``"lognorm"``.
        sources: the files the cells were read from.
        gene_identifiers: the same genes by other identifiers (``{var column: one name per gene}``,
            see :mod:`training.gene_identifiers`); the model's bundle records them.
    """

    X: sp.csr_matrix
    genes: list[str]
    labels: np.ndarray
    batches: np.ndarray
    cell_ids: np.ndarray
    input_kind: str
    sources: list[str] = field(default_factory=list)
    gene_identifiers: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n_cells, n_genes = self.X.shape
        if len(self.genes) != n_genes:
            raise ValueError(f"X has {n_genes} columns but {len(self.genes)} gene names were given")
        for name in ("labels", "batches", "cell_ids"):
            if len(getattr(self, name)) != n_cells:
                raise ValueError(f"X has {n_cells} rows but {name} has {len(getattr(self, name))} entries")

    @property
    def n_cells(self) -> int:
        """Number of cells (rows)."""
        return int(self.X.shape[0])

    def subset(self, cells: np.ndarray | Sequence[int] | Sequence[bool]) -> LabeledData:
        """The cells selected by an integer index or a boolean mask over all cells, in that order."""
        index = np.asarray(cells)
        if index.dtype == bool:
            if index.shape != (self.n_cells,):
                raise ValueError(f"a boolean mask must have one entry per cell ({self.n_cells}), got {index.shape}")
            index = np.flatnonzero(index)
        elif index.size == 0:
            index = index.astype(np.int64)
        elif not np.issubdtype(index.dtype, np.integer):
            raise TypeError(f"cells must be integer indices or a boolean mask, got dtype {index.dtype}")
        return replace(
            self,
            X=self.X[index],
            labels=self.labels[index],
            batches=self.batches[index],
            cell_ids=self.cell_ids[index],
        )

    def select_genes(self, genes: Sequence[str]) -> LabeledData:
        """The columns named ``genes``, in that order.

        Raises:
            GeneMismatchError: a requested gene is not in the data, or is requested twice.
        """
        genes = [str(g) for g in genes]
        repeated = [g for g, count in Counter(genes).items() if count > 1]
        if repeated:
            raise GeneMismatchError(f"genes requested more than once: {_examples(repeated)}")
        position = {g: i for i, g in enumerate(self.genes)}
        missing = [g for g in genes if g not in position]
        if missing:
            raise GeneMismatchError(
                f"{len(missing)} requested gene(s) are not in the data ({_examples(missing)}); "
                f"its genes look like {_examples(self.genes, 3)}"
            )
        columns = np.fromiter((position[g] for g in genes), dtype=np.int64, count=len(genes))
        identifiers = {name: [names[c] for c in columns] for name, names in self.gene_identifiers.items()}
        return replace(self, X=self.X[:, columns].tocsr(), genes=genes, gene_identifiers=identifiers)

    @property
    def preprocessing(self) -> Preprocessing:
        """How a model trained on these cells turns values into its input: the object its bundle saves.

        Training's model input (:meth:`model_input`), gene selection and the bundle all read it, so the
        target sum has one source: :class:`model.preprocessing.Preprocessing`.
        """
        return Preprocessing(input_kind=self.input_kind)

    def model_input(self, rows: np.ndarray | Sequence[int] | slice) -> np.ndarray:
        """Dense float32 model input of ``rows`` (only those rows are densified).

        Uses :func:`model.preprocessing.to_model_input` with :attr:`preprocessing`, so counts are
        normalized over this data's genes exactly as a model trained on them normalizes its input at
        inference.
        """
        values = self.X[rows].toarray()
        if values.dtype != np.float32:
            values = values.astype(np.float32)
        preprocessing = self.preprocessing
        return to_model_input(values, preprocessing.input_kind, preprocessing.target_sum)


@dataclass
class DataReport:
    """What :func:`load_labeled` read, and what a user should know about it before training.

    Attributes:
        n_cells: cells read.
        n_genes: genes kept (shared by every file).
        input_kind: ``"counts"`` or ``"lognorm"``.
        files: per file: path, matrix (``"X"`` or ``"layers/NAME"``), n_cells, n_genes, input_kind,
            backed (read in row chunks).
        genes_per_file: genes each file had.
        n_genes_dropped: per file, genes it had that not every file had (dropped).
        class_counts: cells per class.
        batch_counts: cells per batch.
        class_by_batch: cells per class and batch (``{class: {batch: n}}``, zeros included).
        confounded: classes seen in only one batch (when there are several), mapped to that batch:
            the model cannot tell biology from lab there.
        rare_classes: classes with fewer than ``min_cells_per_class`` cells, mapped to their count.
        min_cells_per_class: the threshold of ``rare_classes``.
        warnings: other things worth a look (e.g. many genes dropped, renamed cell ids).
    """

    n_cells: int
    n_genes: int
    input_kind: str
    files: list[dict[str, Any]]
    genes_per_file: dict[str, int]
    n_genes_dropped: dict[str, int]
    class_counts: dict[str, int]
    batch_counts: dict[str, int]
    class_by_batch: dict[str, dict[str, int]]
    confounded: dict[str, str]
    rare_classes: dict[str, int]
    min_cells_per_class: int
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        data: LabeledData,
        *,
        min_cells_per_class: int = 10,
        files: Sequence[dict[str, Any]] = (),
        genes_per_file: dict[str, int] | None = None,
        warnings: Sequence[str] = (),
    ) -> DataReport:
        """Describe ``data`` (e.g. a training subset); the file details come from the loader."""
        table = pd.crosstab(pd.Series(data.labels, name="class"), pd.Series(data.batches, name="batch"))
        class_by_batch = {
            str(c): {str(b): int(table.at[c, b]) for b in table.columns} for c in table.index
        }
        class_counts = {c: sum(row.values()) for c, row in class_by_batch.items()}
        batch_counts = {str(b): int(table[b].sum()) for b in table.columns}
        confounded: dict[str, str] = {}
        if len(batch_counts) > 1:
            for c, row in class_by_batch.items():
                present = [b for b, n in row.items() if n > 0]
                if len(present) == 1:
                    confounded[c] = present[0]
        rare = {c: n for c, n in class_counts.items() if n < min_cells_per_class}
        genes_per_file = dict(genes_per_file or {})
        return cls(
            n_cells=data.n_cells,
            n_genes=data.n_genes,
            input_kind=data.input_kind,
            files=[dict(f) for f in files],
            genes_per_file=genes_per_file,
            n_genes_dropped={f: n - data.n_genes for f, n in genes_per_file.items()},
            class_counts=class_counts,
            batch_counts=batch_counts,
            class_by_batch=class_by_batch,
            confounded=confounded,
            rare_classes=rare,
            min_cells_per_class=min_cells_per_class,
            warnings=list(warnings),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self)

    def lines(self) -> list[str]:
        """A human-readable summary, one line per item."""
        out = [
            f"{self.n_cells:,} cells x {self.n_genes:,} genes from {max(len(self.files), 1)} file(s); "
            f"values: {_KIND_NAMES.get(self.input_kind, self.input_kind)}"
        ]
        for f in self.files:
            dropped = self.n_genes_dropped.get(f["path"], 0)
            out.append(
                f"  {f['path']} [{f['matrix']}{', read in row chunks' if f.get('backed') else ''}]: "
                f"{f['n_cells']:,} cells, {f['n_genes']:,} genes ({dropped:,} not shared by every file, dropped)"
            )
        if len(self.files) > 1:
            out.append(f"gene intersection: {self.n_genes:,} genes shared by all {len(self.files)} files")
        out.append(f"batches ({len(self.batch_counts)}): " + _counts(self.batch_counts))
        out.append(f"classes ({len(self.class_counts)}): " + _counts(self.class_counts))
        for c, b in self.confounded.items():
            out.append(
                f"confounded: class {c!r} is only in batch {b!r}: the model cannot tell biology from lab there"
            )
        if self.rare_classes:
            out.append(
                f"rare classes (< {self.min_cells_per_class} cells): " + _counts(self.rare_classes)
            )
        out.extend(f"warning: {w}" for w in self.warnings)
        return out


def bundled_dataset() -> Path:
    """Path of the bundled compact copy of CellBench (see ``training/datasets/PROVENANCE.md``)."""
    if not _BUNDLED_CELLBENCH.is_file():
        raise FileNotFoundError(
            f"the bundled data set is missing at {_BUNDLED_CELLBENCH}; reinstall the package "
            "(it ships training/datasets/cellbench.h5ad)"
        )
    return _BUNDLED_CELLBENCH


def load_labeled(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    label_key: str = "cell_type",
    batch_key: str = "batch",
    layer: str | None = None,
    backed: bool | str = "auto",
    min_cells_per_class: int = 10,
    chunk_rows: int | None = None,
) -> tuple[LabeledData, DataReport]:
    """Read labeled cells from one ``.h5ad`` file or several (one per lab).

    Args:
        paths: one file (which must have ``obs[batch_key]``) or several files; a file of several
            without ``obs[batch_key]`` is one batch named after its stem.
        label_key: ``obs`` column with the cell types.
        batch_key: ``obs`` column with the batches.
        layer: ``"X"`` or a name in ``layers``; default ``layers['counts']`` if present, else ``X``.
        backed: ``True`` reads every file in row chunks, ``False`` whole, ``"auto"`` in row chunks
            when the matrix needs more than :data:`BACKED_MEMORY_FRACTION` of the available memory.
        min_cells_per_class: classes with fewer cells are reported as rare (they are kept).
        chunk_rows: rows per chunk in backed mode (default: about :data:`CHUNK_BYTES` per chunk).

    Returns:
        The data and a report of what was read.

    Raises:
        InputError: a file is missing or unreadable, lacks a column or the layer, has missing labels
            or duplicated gene names, files share no gene, or files hold different kinds of values.
    """
    if backed not in (True, False, "auto"):
        raise ValueError(f"backed must be True, False or 'auto' (got {backed!r})")
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"chunk_rows must be positive (got {chunk_rows})")
    files = _as_paths(paths)
    warnings: list[str] = []
    with _open_all(files) as handles:
        sources = [
            _Source.open(path, handle, label_key=label_key, batch_key=batch_key, layer=layer, single=len(files) == 1)
            for path, handle in zip(files, handles, strict=True)
        ]
        kinds = {s.name: s.detect_kind() for s in sources}
        if len(set(kinds.values())) > 1:
            listing = ", ".join(f"{name}: {_KIND_NAMES[k]}" for name, k in kinds.items())
            raise InputKindError(
                f"the files hold different kinds of values ({listing}); give files of one kind, e.g. "
                "the raw counts of every file (layer='counts' or layer='X', whichever holds them)"
            )
        input_kind = next(iter(kinds.values()))
        genes = _shared_genes(sources, warnings)
        rows = _RowBuilder(len(genes), capacity=sum(s.expected_values() for s in sources))
        for s in sources:
            s.read_into(rows, genes, input_kind, backed=_use_backed(s, backed), chunk_rows=chunk_rows)
    X = rows.finish()
    for s in sources:
        if s.backed and s.encoding == "csc_matrix":
            warnings.append(
                f"{s.name}: {s.matrix_key} is stored column-wise (CSC), so every row chunk re-reads the whole "
                "matrix; store it as CSR for fast chunked reading"
            )
    cell_ids = _unique_cell_ids(sources, warnings)
    _check_batch_names(sources, warnings)
    data = LabeledData(
        X=X,
        genes=genes,
        labels=np.concatenate([s.labels for s in sources]),
        batches=np.concatenate([s.batches for s in sources]),
        cell_ids=cell_ids,
        input_kind=input_kind,
        sources=[s.name for s in sources],
        gene_identifiers=shared_identifiers([(s.genes, s.identifier_columns) for s in sources], genes),
    )
    return data, loading_report(data, sources, warnings, min_cells_per_class)


def loading_report(
    data: LabeledData | CellAnnotations, sources: list[_Source], warnings: list[str], min_cells_per_class: int
) -> DataReport:
    """The :class:`DataReport` of cells just opened from ``sources`` (in memory or on disk), with a warning
    added when every cell is in one batch."""
    if len(data.batch_names) == 1:
        warnings.append(
            f"all cells are in one batch ({data.batch_names[0]!r}): no lab can be held out to measure "
            "how the model does on a lab it never saw"
        )
    return DataReport.build(
        data,  # type: ignore[arg-type]  # DataReport reads only the annotations and sizes
        min_cells_per_class=min_cells_per_class,
        files=[s.describe() for s in sources],
        genes_per_file={s.name: len(s.genes) for s in sources},
        warnings=warnings,
    )


class _Source:
    """One open ``.h5ad`` file: its labels, batches, genes and the matrix to read."""

    def __init__(
        self,
        path: Path,
        matrix_key: str,
        element: h5py.Group | h5py.Dataset,
        genes: list[str],
        identifier_columns: dict[str, list[str]],
        labels: np.ndarray,
        batches: np.ndarray,
        cell_ids: np.ndarray,
    ) -> None:
        self.path = path
        self.name = str(path)
        self.matrix_key = matrix_key
        self.element = element
        self.genes = genes
        self.identifier_columns = identifier_columns
        self.labels = labels
        self.batches = batches
        self.cell_ids = cell_ids
        self.encoding = _encoding(element)
        self.rows = H5adRows(element.file, None if matrix_key == "X" else matrix_key.removeprefix("layers/"), allow_csc=True)
        self.backed = False
        self.input_kind = ""
        self.values_per_row = 0.0

    @classmethod
    def open(
        cls,
        path: Path,
        handle: h5py.File,
        *,
        label_key: str,
        batch_key: str,
        layer: str | None,
        single: bool,
    ) -> _Source:
        """Read the annotations of ``handle`` and locate its matrix; raise :class:`InputError` if unusable."""
        try:
            obs, obs_columns = _read_obs(handle["obs"], (label_key, batch_key))
            var = read_elem(handle["var"])
            var_names = [str(g) for g in var.index]
        except Exception as exc:  # anndata's readers raise several types for a malformed file
            raise InputError(
                f"{path} is not a readable .h5ad file (cannot read its obs/var tables: {type(exc).__name__}: {exc})"
            ) from None
        if len(obs) == 0:
            raise InputError(f"{path} has no cells")
        matrix_key = _matrix_key(path, handle, layer)
        element = handle[matrix_key]
        encoding = _encoding(element)
        if encoding not in ("csr_matrix", "csc_matrix", "array"):
            raise InputError(
                f"{path}: {matrix_key} is stored as {encoding!r}; expected a sparse (CSR/CSC) or dense matrix "
                "written by anndata >= 0.8 (re-save the file with a current anndata)"
            )
        shape = tuple(int(n) for n in (element.attrs["shape"] if encoding != "array" else element.shape))
        if shape != (len(obs), len(var_names)):
            raise InputError(
                f"{path}: {matrix_key} has shape {shape} but the file has {len(obs)} cells and {len(var_names)} genes"
            )
        duplicated = [g for g, n in Counter(var_names).items() if n > 1]
        if duplicated:
            raise InputError(
                f"{path}: {len(duplicated)} gene name(s) appear more than once in var_names "
                f"({_examples(duplicated)}); make them unique first (e.g. keep one column per gene, or "
                "anndata's var_names_make_unique() if they really are different genes)"
            )
        labels = _text_column(path, obs, label_key, "label", required=True, columns=obs_columns)
        batches = _text_column(path, obs, batch_key, "batch", required=single, columns=obs_columns)
        if batches is None:
            batches = np.full(len(obs), path.stem)
        return cls(
            path=path,
            matrix_key=matrix_key,
            element=element,
            genes=var_names,
            identifier_columns=identifier_columns(var.items(), var_names),
            labels=labels,
            batches=batches,
            cell_ids=obs.index.astype(str).to_numpy(dtype=str),
        )

    @property
    def n_rows(self) -> int:
        """Number of cells in the file."""
        return len(self.labels)

    def expected_values(self) -> int:
        """Stored values the file will contribute: its non-zeros, estimated from the sample if dense."""
        if self.encoding == "array":
            return int(self.n_rows * self.values_per_row * 1.1)
        return int(self.element["data"].shape[0])

    def estimated_bytes(self) -> int:
        """Memory needed to read the matrix at once: float32 CSR, plus the dense array if stored dense."""
        if self.encoding == "array":
            return 12 * self.n_rows * len(self.genes)
        return 8 * int(self.element["data"].shape[0]) + 8 * (self.n_rows + 1)

    def read_rows(self, start: int, stop: int, columns: np.ndarray | None = None) -> sp.csr_matrix:
        """Rows ``[start, stop)`` as a float32 CSR matrix (structurally checked by :class:`model.h5ad.H5adRows`),
        over all of the file's genes or the file columns ``columns``, in that order."""
        return self.rows.read_csr(start, stop, columns)

    def detect_kind(self) -> str:
        """Detect counts vs log-normalized on up to :data:`DETECTION_SAMPLE_ROWS` rows of the file."""
        n_blocks = 1 if self.n_rows <= DETECTION_SAMPLE_ROWS else 4
        size = min(self.n_rows, DETECTION_SAMPLE_ROWS) // n_blocks
        starts = np.linspace(0, self.n_rows - size, n_blocks).astype(int)
        sample = sp.vstack([self.read_rows(int(s), int(s) + size) for s in starts], format="csr")
        self.values_per_row = sample.nnz / max(sample.shape[0], 1)
        try:
            self.input_kind = detect_input_kind(sample)
        except InputKindError as exc:
            raise InputKindError(f"{self.path} ({self.matrix_key}): {exc}") from None
        return self.input_kind

    def read_into(
        self, rows: _RowBuilder, genes: list[str], input_kind: str, *, backed: bool, chunk_rows: int | None
    ) -> None:
        """Append the file's rows over ``genes`` to ``rows``, every value checked against ``input_kind``."""
        self.backed = backed
        position = {g: i for i, g in enumerate(self.genes)}
        columns = np.fromiter((position[g] for g in genes), dtype=np.int64, count=len(genes))
        identity = len(columns) == len(self.genes) and bool(np.array_equal(columns, np.arange(len(columns))))
        if backed:
            per_row = max(1, self.estimated_bytes() // self.n_rows)
            step = chunk_rows or max(1, CHUNK_BYTES // per_row)
        else:
            step = self.n_rows
        for start in range(0, self.n_rows, step):
            stop = min(start + step, self.n_rows)
            block = self.read_rows(start, stop, None if identity else columns)
            self._check(block, start, input_kind)
            rows.append(block)

    def _check(self, block: sp.csr_matrix, first_row: int, input_kind: str) -> None:
        """Check ``block`` (rows from ``first_row``) against ``input_kind``, in slices of bounded size."""
        n_rows = block.shape[0]
        step = max(1, int(CHECK_VALUES * n_rows / max(block.nnz, 1)))
        for offset in range(0, n_rows, step):
            part = block if step >= n_rows else _row_view(block, offset, min(offset + step, n_rows))
            try:
                check_values(part, input_kind)
            except InputKindError as exc:
                first = first_row + offset
                raise InputKindError(
                    f"{self.path} ({self.matrix_key}), cells {first}-{first + part.shape[0] - 1}: {exc} (the file "
                    f"was detected as {_KIND_NAMES[input_kind]} from a sample of its rows)"
                ) from None

    def describe(self) -> dict[str, Any]:
        """JSON-ready facts about the file, for :class:`DataReport`."""
        return {
            "path": self.name,
            "matrix": self.matrix_key,
            "n_cells": self.n_rows,
            "n_genes": len(self.genes),
            "input_kind": self.input_kind,
            "backed": self.backed,
        }


def _as_paths(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The given path(s) as a non-empty list of distinct existing files."""
    items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    if not items:
        raise InputError("no input file was given; pass one .h5ad file or one file per lab")
    files = [Path(p) for p in items]
    repeated = [str(p) for p, n in Counter(p.resolve() for p in files).items() if n > 1]
    if repeated:
        raise InputError(f"the same file was given more than once: {', '.join(repeated)}")
    for path in files:
        if not path.exists():
            raise InputError(f"input file not found: {path}")
        if not path.is_file():
            raise InputError(f"{path} is not a file; pass .h5ad files")
    return files


def open_hdf5(path: Path) -> h5py.File:
    """``path`` opened read-only as HDF5, or :class:`InputError` saying it is not an ``.h5ad`` (HDF5) file."""
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"cannot read {path} as an .h5ad (HDF5) file: {exc}") from None


@contextmanager
def _open_all(files: list[Path]) -> Iterator[list[h5py.File]]:
    """Open every file read-only as HDF5, raising :class:`InputError` for one that is not."""
    handles: list[h5py.File] = []
    try:
        for path in files:
            handles.append(open_hdf5(path))
        yield handles
    finally:
        for handle in handles:
            handle.close()


def _matrix_key(path: Path, handle: h5py.File, layer: str | None) -> str:
    """``"X"`` or ``"layers/NAME"``: where the values to train on are stored."""
    layers = sorted(handle["layers"].keys()) if "layers" in handle else []
    if layer is None:
        layer = "counts" if "counts" in layers else "X"
    if layer == "X":
        if "X" not in handle:
            raise InputError(
                f"{path} has no X matrix; name the layer to use with layer= "
                f"(layers: {', '.join(layers) or 'none'})"
            )
        return "X"
    if layer not in layers:
        raise InputError(
            f"{path} has no layer {layer!r}; its layers are: {', '.join(layers) or 'none'} "
            "(or use layer='X')"
        )
    return f"layers/{layer}"


def _read_obs(element: h5py.Group | h5py.Dataset, wanted: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """The cell names and the ``wanted`` columns of an ``obs`` table (those it has), and all its column names.

    Only those columns are read: an atlas' ``obs`` often holds dozens of per-cell columns that training
    never uses. Tables not in anndata's group layout are read whole.
    """
    index_key = decode_text(element.attrs.get("_index", "")) if isinstance(element, h5py.Group) else ""
    if not index_key or index_key not in element:
        obs = read_elem(element)
        return obs, [str(c) for c in obs.columns]
    order = element.attrs.get("column-order", [])
    order = [order] if isinstance(order, str | bytes) else (order.tolist() if hasattr(order, "tolist") else order)
    columns = [decode_text(c) for c in order]
    data = {key: read_elem(element[key]) for key in dict.fromkeys(wanted) if key in columns and key in element}
    index = pd.Index(np.asarray(read_elem(element[index_key])).astype(str))
    return pd.DataFrame(data, index=index), columns


def _text_column(
    path: Path, obs: pd.DataFrame, key: str, what: str, *, required: bool, columns: Sequence[str]
) -> np.ndarray | None:
    """``obs[key]`` as a str array; ``None`` if absent and not required; refuse missing values.

    ``columns``: every column of the file's ``obs`` (``obs`` itself may hold only the ones read).
    """
    if key not in obs.columns:
        if not required:
            return None
        hint = (
            " (or pass one file per lab: a file without the batch column is one batch named after the file)"
            if what == "batch"
            else ""
        )
        raise InputError(
            f"{path} has no {what} column {key!r} in obs; its columns are: "
            f"{', '.join(map(repr, columns)) or 'none'}; choose the right one with the {what} key option{hint}"
        )
    column = obs[key]
    text = column.astype(str)
    missing = column.isna().to_numpy() | text.str.strip().eq("").to_numpy()
    if missing.any():
        examples = _examples([str(c) for c in obs.index[missing]])
        raise InputError(
            f"{path}: {int(missing.sum())} cell(s) have no {what} in obs[{key!r}] (e.g. {examples}); "
            f"remove those cells or give them a {what}"
        )
    return text.to_numpy(dtype=str)


def _shared_genes(sources: list[_Source], warnings: list[str]) -> list[str]:
    """Genes every file has, in the first file's order; refuse an empty intersection."""
    common = set(sources[0].genes)
    for s in sources[1:]:
        common &= set(s.genes)
    genes = [g for g in sources[0].genes if g in common]
    if not genes:
        listing = "; ".join(f"{s.name}: {_examples(s.genes, 3)}" for s in sources)
        raise GeneMismatchError(
            f"the files share no gene name ({listing}); use the same gene identifiers (symbols vs "
            "Ensembl IDs) and species in every file"
        )
    for s in sources:
        dropped = len(s.genes) - len(genes)
        if dropped > len(s.genes) / 2:
            warnings.append(
                f"{s.name}: {dropped:,} of its {len(s.genes):,} genes are not in every file and were dropped"
            )
    return genes


def _use_backed(source: _Source, backed: bool | str) -> bool:
    """Whether to read ``source`` in row chunks."""
    if backed == "auto":
        return source.estimated_bytes() > BACKED_MEMORY_FRACTION * _available_memory_bytes()
    return bool(backed)


def _available_memory_bytes() -> int:
    """Memory available to new allocations (``MemAvailable`` on Linux, free pages elsewhere)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class _RowBuilder:
    """Collects CSR row blocks into one float32 CSR matrix with at most one copy of the data.

    A single block is handed over as it is. From the second block on, the values go to buffers
    preallocated for ``capacity`` stored values (grown if exceeded), so that the peak memory is the
    final matrix plus one block, not twice the matrix.
    """

    def __init__(self, n_cols: int, capacity: int) -> None:
        self.n_cols = n_cols
        self.capacity = capacity
        self.first: sp.csr_matrix | None = None
        self.data = np.empty(0, dtype=np.float32)
        self.indices = np.empty(0, dtype=np.int32)
        self.row_ends: list[np.ndarray] = [np.zeros(1, dtype=np.int64)]
        self.nnz = 0
        self.n_blocks = 0

    def append(self, block: sp.csr_matrix) -> None:
        """Append the rows of ``block`` (same columns)."""
        self.n_blocks += 1
        if self.n_blocks == 1:
            self.first = block
            return
        if self.first is not None:
            first, self.first = self.first, None
            self.data = np.empty(max(self.capacity, first.nnz + block.nnz), dtype=np.float32)
            self.indices = np.empty(self.data.size, dtype=np.int32)
            self._copy(first)
        self._copy(block)

    def _copy(self, block: sp.csr_matrix) -> None:
        end = self.nnz + block.nnz
        if end > self.data.size:
            grown = max(end, int(self.data.size * 1.5))
            self.data.resize(grown, refcheck=False)
            self.indices.resize(grown, refcheck=False)
        self.data[self.nnz : end] = block.data
        self.indices[self.nnz : end] = block.indices
        self.row_ends.append(block.indptr[1:].astype(np.int64) + self.nnz)
        self.nnz = end

    def finish(self) -> sp.csr_matrix:
        """The collected rows as a CSR matrix (the buffers are handed over, shrunk to size)."""
        if self.first is not None:
            return self.first
        self.data.resize(self.nnz, refcheck=False)
        self.indices.resize(self.nnz, refcheck=False)
        indptr = np.concatenate(self.row_ends)
        if self.nnz < np.iinfo(np.int32).max:
            indptr = indptr.astype(np.int32)
        else:  # scipy needs one index dtype for indices and indptr
            self.indices = self.indices.astype(np.int64)
        return sp.csr_matrix((self.data, self.indices, indptr), shape=(len(indptr) - 1, self.n_cols))


def _unique_cell_ids(sources: list[_Source], warnings: list[str]) -> np.ndarray:
    """All cell ids; prefixed with their file's stem when files share ids."""
    ids = np.concatenate([s.cell_ids for s in sources])
    if len(sources) > 1 and len(np.unique(ids)) < len(ids):
        ids = np.concatenate([np.char.add(f"{s.path.stem}:", s.cell_ids) for s in sources])
        warnings.append("some cell ids occur in several files: every cell id was prefixed with '<file stem>:'")
    n_repeated = len(ids) - len(np.unique(ids))
    if n_repeated:
        warnings.append(f"{n_repeated} cell id(s) occur more than once within a file (obs_names are not unique)")
    return ids


def _check_batch_names(sources: list[_Source], warnings: list[str]) -> None:
    """Warn when files contribute cells to the same batch name (they are pooled as one batch)."""
    owners: dict[str, list[str]] = {}
    for s in sources:
        for b in np.unique(s.batches):
            owners.setdefault(str(b), []).append(s.name)
    for batch, names in owners.items():
        if len(names) > 1:
            warnings.append(f"batch {batch!r} occurs in several files ({', '.join(names)}); they are pooled as one batch")


def _row_view(matrix: sp.csr_matrix, start: int, stop: int) -> sp.csr_matrix:
    """Rows ``[start, stop)`` of ``matrix`` sharing its data and indices (no copy of the values)."""
    lo, hi = int(matrix.indptr[start]), int(matrix.indptr[stop])
    return sp.csr_matrix(
        (matrix.data[lo:hi], matrix.indices[lo:hi], matrix.indptr[start : stop + 1] - lo),
        shape=(stop - start, matrix.shape[1]),
    )


def _encoding(element: h5py.Group | h5py.Dataset) -> str:
    """anndata's encoding type of a stored element (a plain dataset is a dense array)."""
    default = "array" if isinstance(element, h5py.Dataset) else "unknown"
    return str(element.attrs.get("encoding-type", default))


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counts.items())


def _examples(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in list(names)[:limit])
    return shown + (", ..." if len(names) > limit else "")
