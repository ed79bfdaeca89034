"""Reading and writing for batch scoring: rows of an ``.h5ad`` file straight from HDF5, and the outputs.

Reading never loads a whole matrix: :class:`H5adRows` reads row ranges of ``X`` (or a layer) directly
from the HDF5 datasets of a CSR matrix (``data``, ``indices``, ``indptr``) or from a dense array, so
memory depends on the rows asked for, not on the file. Column-major (CSC) matrices cannot be read by
rows cheaply and are refused with a message saying how to convert them.

Writing produces one of three formats, chosen by the output's suffix (:data:`OUTPUT_SUFFIXES`):

- ``.h5ad``: a byte copy of the input with the result columns added to ``obs`` (``X``, layers and
  everything else untouched; result columns that already exist are replaced);
- ``.csv`` / ``.parquet``: a table with one row per cell, keyed by ``cell_id`` (the obs name) and
  ``source_file`` (the input path as given), written chunk by chunk.

The result columns are described by :class:`ResultColumns`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
from anndata.io import read_elem, write_elem

from model.bundle import UNKNOWN_LABEL
from model.errors import CellTypeError, InputError
from model.outputs import CONFIDENCE_COLUMN, LABEL_COLUMN, PROBABILITY_COLUMN_PREFIX

OUTPUT_SUFFIXES = (".h5ad", ".csv", ".parquet")
"""Output formats, by file suffix."""

SOURCE_FILE_COLUMN = "source_file"
"""Table outputs: the input file the cell came from, as given on the command line."""


class ScoringError(CellTypeError):
    """A scoring run cannot start or go on: bad output path, stale resume state, unreachable scheduler."""


@dataclass(frozen=True)
class ResultColumns:
    """The per-cell result columns for a model's classes and a requested top-k.

    Always :data:`LABEL_COLUMN` and :data:`CONFIDENCE_COLUMN`. Then, for ``0 < top_k < n_classes``,
    ``top1_label, top1_prob, ..., top{k}_label, top{k}_prob`` (the k most likely types, most likely
    first, ties broken by class order); for ``top_k >= n_classes`` one ``probability:<class>`` column
    per class instead (the full distribution, in the model's class order); nothing more for ``top_k == 0``.
    """

    classes: tuple[str, ...]
    top_k: int

    def __post_init__(self) -> None:
        if self.top_k < 0:
            raise ScoringError(f"--top-k must be 0 or more, got {self.top_k}")

    @property
    def per_class(self) -> bool:
        """True when the output holds every class's probability instead of the top k."""
        return self.top_k >= len(self.classes)

    @property
    def n_top(self) -> int:
        """Number of top-k column pairs (0 in per-class mode)."""
        return 0 if self.per_class else self.top_k

    @property
    def label_categories(self) -> list[str]:
        """Categories of the label columns: the classes, then ``"Unknown"`` (once)."""
        return list(self.classes) + ([] if UNKNOWN_LABEL in self.classes else [UNKNOWN_LABEL])

    @property
    def probability_columns(self) -> list[str]:
        """Per-class mode: ``probability:<class>`` for each class, in class order (as the REST service's CSV).

        A ``/`` in a class name becomes ``_`` (HDF5 reads ``/`` as a path separator).
        """
        if not self.per_class:
            return []
        names = [f"{PROBABILITY_COLUMN_PREFIX}{name.replace('/', '_')}" for name in self.classes]
        if len(set(names)) != len(names):
            raise ScoringError(
                "the model's class names collide once '/' is replaced by '_'; use a --top-k below the number "
                f"of classes ({len(self.classes)})"
            )
        return names

    @property
    def label_columns(self) -> list[str]:
        """The columns holding cell-type names (the others hold probabilities)."""
        return [LABEL_COLUMN] + [f"top{rank}_label" for rank in range(1, self.n_top + 1)]

    def names(self) -> list[str]:
        """Every result column name, in output order."""
        names = [LABEL_COLUMN, CONFIDENCE_COLUMN]
        for rank in range(1, self.n_top + 1):
            names += [f"top{rank}_label", f"top{rank}_prob"]
        return names + self.probability_columns


@dataclass(frozen=True)
class ChunkResult:
    """Predictions for a contiguous range of cells.

    Attributes:
        label_codes: per cell, the index of its predicted label in ``ResultColumns.label_categories``.
        confidence: per cell, the probability of the most likely class.
        top_index: ``(n, n_top)`` class indices of the k most likely classes (top-k mode).
        top_prob: ``(n, n_top)`` their probabilities (top-k mode).
        probabilities: ``(n, n_classes)`` every class's probability (per-class mode), else ``(n, 0)``.
    """

    label_codes: np.ndarray
    confidence: np.ndarray
    top_index: np.ndarray
    top_prob: np.ndarray
    probabilities: np.ndarray

    FIELDS = ("label_codes", "confidence", "top_index", "top_prob", "probabilities")

    @classmethod
    def empty(cls, columns: ResultColumns) -> ChunkResult:
        """A result for no cells, shaped for ``columns``."""
        n_probabilities = len(columns.classes) if columns.per_class else 0
        return cls(
            label_codes=np.zeros(0, dtype=np.int32),
            confidence=np.zeros(0, dtype=np.float32),
            top_index=np.zeros((0, columns.n_top), dtype=np.int32),
            top_prob=np.zeros((0, columns.n_top), dtype=np.float32),
            probabilities=np.zeros((0, n_probabilities), dtype=np.float32),
        )

    @property
    def n_cells(self) -> int:
        """Number of cells in this result."""
        return int(self.label_codes.shape[0])

    @classmethod
    def concat(cls, parts: Sequence[ChunkResult]) -> ChunkResult:
        """The results of consecutive ranges joined into one."""
        return cls(**{name: np.concatenate([getattr(p, name) for p in parts]) for name in cls.FIELDS})

    def save(self, path: Path) -> None:
        """Write to ``path`` atomically (a temporary file renamed into place); no pickle."""
        temporary = path.with_name(path.name + ".tmp")
        with open(temporary, "wb") as handle:
            np.savez(handle, **{name: getattr(self, name) for name in self.FIELDS})
        os.replace(temporary, path)

    @classmethod
    def load(cls, path: Path) -> ChunkResult:
        """Read a result written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as stored:
            return cls(**{name: stored[name] for name in cls.FIELDS})

    def frame(self, columns: ResultColumns) -> pd.DataFrame:
        """The result columns as a DataFrame (labels as categoricals)."""
        categories = columns.label_categories
        data: dict[str, Any] = {
            LABEL_COLUMN: pd.Categorical.from_codes(self.label_codes, categories),
            CONFIDENCE_COLUMN: self.confidence,
        }
        classes = np.asarray(columns.classes, dtype=object)
        for rank in range(columns.n_top):
            data[f"top{rank + 1}_label"] = pd.Categorical(
                classes[self.top_index[:, rank]], categories=categories
            )
            data[f"top{rank + 1}_prob"] = self.top_prob[:, rank]
        for position, name in enumerate(columns.probability_columns):
            data[name] = self.probabilities[:, position]
        return pd.DataFrame(data)


@dataclass(frozen=True)
class RowBlock:
    """Rows ``start .. start + n_rows - 1`` of a matrix, as stored: CSR parts or a dense array.

    Attributes:
        start: the first row's index in the file.
        n_rows: number of rows.
        n_columns: number of columns (the file's genes).
        values: CSR ``data`` (1-D) or the dense rows (2-D), in the file's dtype.
        indices: CSR column indices (``None`` when dense).
        indptr: CSR row pointers rebased to 0, int32 (``None`` when dense).
    """

    start: int
    n_rows: int
    n_columns: int
    values: np.ndarray
    indices: np.ndarray | None = None
    indptr: np.ndarray | None = None

    @property
    def is_sparse(self) -> bool:
        """True for CSR rows."""
        return self.indptr is not None

    def csr(self) -> sp.csr_matrix:
        """The rows as a CSR matrix (dense rows are converted; explicit zeros are dropped)."""
        if self.is_sparse:
            return sp.csr_matrix(
                (self.values, self.indices, self.indptr), shape=(self.n_rows, self.n_columns)
            )
        return sp.csr_matrix(self.values)


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class H5adRows:
    """Row access to the matrix (``X`` or a layer) of an ``.h5ad`` file, without loading it.

    Args:
        path: the ``.h5ad`` file.
        layer: a key of ``layers`` to read instead of ``X``.

    Raises:
        InputError: the file is missing or not an ``.h5ad`` file, the layer does not exist, the matrix
            is column-major or of an unknown encoding, or ``obs``/``var`` do not match its shape.
    """

    def __init__(self, path: str | os.PathLike[str], layer: str | None = None) -> None:
        self.path = Path(path)
        self.layer = layer
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such file; give the path of an .h5ad file")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise InputError(f"{self.path}: cannot be read as an .h5ad (HDF5) file: {exc}") from None
        try:
            self._open_matrix()
            self.genes = self._read_genes()
            self._obs_names = self._obs_index()
        except BaseException:
            self._file.close()
            raise

    def _element_name(self) -> str:
        return "X" if self.layer is None else f"layers/{self.layer}"

    def _open_matrix(self) -> None:
        name = self._element_name()
        if name not in self._file:
            if self.layer is None:
                raise InputError(f"{self.path}: has no X matrix; is it an AnnData .h5ad file?")
            layers = sorted(self._file["layers"]) if "layers" in self._file else []
            raise InputError(
                f"{self.path}: has no layer {self.layer!r}; its layers are {layers or 'none'} "
                "(leave out --layer to score X)"
            )
        element = self._file[name]
        self._data = self._indices = self._indptr = self._dense = None
        if isinstance(element, h5py.Dataset):
            if element.ndim != 2:
                raise InputError(f"{self.path}: {name} is {element.ndim}-D; expected a cells x genes matrix")
            self._dense = element
            self.n_cells, self.n_genes = (int(n) for n in element.shape)
            return
        encoding = _decode(element.attrs.get("encoding-type", element.attrs.get("h5sparse_format", "")))
        if encoding in ("csc_matrix", "csc"):
            raise InputError(
                f"{self.path}: {name} is stored column by column (CSC), which cannot be read by cells; "
                "convert it once, e.g. adata.X = adata.X.tocsr(); adata.write_h5ad(...)"
            )
        if encoding not in ("csr_matrix", "csr") or not {"data", "indices", "indptr"} <= set(element):
            raise InputError(
                f"{self.path}: {name} has an unknown encoding {encoding!r}; expected CSR or dense"
            )
        shape = element.attrs.get("shape", element.attrs.get("h5sparse_shape"))
        self.n_cells, self.n_genes = (int(n) for n in shape)
        self._data, self._indices, self._indptr = element["data"], element["indices"], element["indptr"]
        if self._indptr.shape[0] != self.n_cells + 1:
            raise InputError(
                f"{self.path}: {name}/indptr has {self._indptr.shape[0]} entries for {self.n_cells} cells"
            )

    def _read_genes(self) -> list[str]:
        if "var" not in self._file:
            raise InputError(f"{self.path}: has no var (gene names)")
        genes = [str(g) for g in read_elem(self._file["var"]).index]
        if len(genes) != self.n_genes:
            raise InputError(
                f"{self.path}: var names {len(genes)} genes but the matrix has {self.n_genes} columns"
            )
        return genes

    def _obs_index(self) -> h5py.Dataset | np.ndarray:
        obs = self._file.get("obs")
        if isinstance(obs, h5py.Group) and "_index" in obs.attrs and _decode(obs.attrs["_index"]) in obs:
            names = obs[_decode(obs.attrs["_index"])]
        elif obs is not None:
            names = np.asarray(read_elem(obs).index.astype(str), dtype=object)
        else:
            raise InputError(f"{self.path}: has no obs (cell names)")
        if names.shape[0] != self.n_cells:
            raise InputError(
                f"{self.path}: obs names {names.shape[0]} cells but the matrix has {self.n_cells} rows"
            )
        return names

    @property
    def is_sparse(self) -> bool:
        """True when the matrix is stored as CSR."""
        return self._dense is None

    @property
    def dtype(self) -> np.dtype:
        """The stored values' dtype."""
        return (self._data if self._dense is None else self._dense).dtype

    def cell_ids(self, start: int, stop: int) -> np.ndarray:
        """The obs names of rows ``start .. stop - 1`` (object array of str)."""
        names = self._obs_names
        if isinstance(names, h5py.Dataset):
            if names.dtype.kind == "O" or h5py.check_string_dtype(names.dtype) is not None:
                return np.asarray(names.asstr()[start:stop], dtype=object)
            return np.asarray([str(v) for v in names[start:stop]], dtype=object)
        return names[start:stop]

    def read(self, start: int, stop: int) -> RowBlock:
        """Rows ``start .. stop - 1``.

        Raises:
            InputError: the rows cannot be read (a damaged file).
        """
        try:
            if self._dense is not None:
                return RowBlock(start, stop - start, self.n_genes, self._dense[start:stop])
            pointers = self._indptr[start : stop + 1].astype(np.int64)
            low, high = int(pointers[0]), int(pointers[-1])
            indices = self._indices[low:high]
            if indices.dtype != np.int32:
                indices = indices.astype(np.int32)
            return RowBlock(
                start,
                stop - start,
                self.n_genes,
                self._data[low:high],
                indices,
                (pointers - low).astype(np.int32),
            )
        except OSError as exc:
            raise InputError(f"{self.path}: cannot read cells {start}..{stop - 1}: {exc}") from None

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __enter__(self) -> H5adRows:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def output_suffix(path: Path) -> str:
    """The output format of ``path`` (one of :data:`OUTPUT_SUFFIXES`), or raise :class:`ScoringError`."""
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise ScoringError(
            f"cannot write {path}: unsupported output suffix {path.suffix or '(none)'!r}; "
            f"use one of {', '.join(OUTPUT_SUFFIXES)}"
        )
    return suffix


class TableWriter:
    """Writes the per-cell table (CSV or parquet) chunk by chunk, so memory stays flat."""

    def __init__(self, path: Path, suffix: str) -> None:
        self.path = path
        self.suffix = suffix
        self._parquet: pq.ParquetWriter | None = None
        self._wrote_header = False

    def write(self, frame: pd.DataFrame) -> None:
        """Append rows (categoricals are written as plain strings)."""
        if self.suffix == ".csv":
            frame.to_csv(
                self.path, mode="a" if self._wrote_header else "w", header=not self._wrote_header, index=False
            )
            self._wrote_header = True
            return
        table = _arrow_table(frame)
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self.path, table.schema)
        self._parquet.write_table(table)

    def close(self) -> None:
        """Finish the file (parquet footer)."""
        if self._parquet is not None:
            self._parquet.close()


def _arrow_table(frame: pd.DataFrame) -> pa.Table:
    """``frame`` as an arrow table with plain string columns for labels and ids (any number of rows)."""
    arrays = {}
    for name, column in frame.items():
        if isinstance(column.dtype, pd.CategoricalDtype) or column.dtype == object:
            arrays[name] = pa.array(column.astype(object).to_numpy(), type=pa.string())
        else:
            arrays[name] = pa.array(column.to_numpy())
    return pa.table(arrays)


class ObsColumnsWriter:
    """Adds result columns to ``obs`` of a copy of an ``.h5ad`` file, filled chunk by chunk.

    The copy is byte-identical to the input until the columns are added; only ``obs`` changes. Columns
    are written in anndata's on-disk encoding (categorical labels, float32 probabilities), each
    created at full length up front and filled slice by slice, so memory stays flat.
    """

    def __init__(self, source: Path, target: Path, columns: ResultColumns, n_cells: int) -> None:
        shutil.copyfile(source, target)
        self._file = h5py.File(target, "r+")
        obs = self._file["obs"]
        if not isinstance(obs, h5py.Group) or _decode(obs.attrs.get("encoding-type", "")) != "dataframe":
            self._file.close()
            raise InputError(
                f"{source}: obs is stored in a legacy layout that cannot be extended in place; re-save the "
                "file with a recent anndata, or write a .csv/.parquet table instead"
            )
        self._columns = columns
        categories = columns.label_categories
        code_dtype = np.int8 if len(categories) < 128 else np.int16 if len(categories) < 32768 else np.int32
        self._datasets: dict[str, h5py.Dataset] = {}
        label_columns = set(columns.label_columns)
        for name in columns.names():
            if name in obs:
                del obs[name]
            if name in label_columns:
                group = obs.create_group(name)
                group.attrs.update(
                    {"encoding-type": "categorical", "encoding-version": "0.2.0", "ordered": False}
                )
                write_elem(group, "categories", np.asarray(categories, dtype=object))
                self._datasets[name] = self._array(group, "codes", n_cells, code_dtype)
            else:
                self._datasets[name] = self._array(obs, name, n_cells, np.float32)
        order = [_decode(c) for c in np.atleast_1d(obs.attrs.get("column-order", np.array([], dtype=object)))]
        new = set(columns.names())
        obs.attrs["column-order"] = np.asarray(
            [c for c in order if c not in new] + columns.names(), dtype=object
        )

    @staticmethod
    def _array(group: h5py.Group, name: str, n_cells: int, dtype: type) -> h5py.Dataset:
        dataset = group.create_dataset(name, shape=(n_cells,), dtype=dtype)
        dataset.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        return dataset

    def write(self, start: int, result: ChunkResult) -> None:
        """Fill rows ``start .. start + result.n_cells - 1`` of every result column."""
        stop = start + result.n_cells
        self._datasets[LABEL_COLUMN][start:stop] = result.label_codes
        self._datasets[CONFIDENCE_COLUMN][start:stop] = result.confidence
        for rank in range(self._columns.n_top):
            self._datasets[f"top{rank + 1}_label"][start:stop] = result.top_index[:, rank]
            self._datasets[f"top{rank + 1}_prob"][start:stop] = result.top_prob[:, rank]
        for position, name in enumerate(self._columns.probability_columns):
            self._datasets[name][start:stop] = result.probabilities[:, position]

    def close(self) -> None:
        """Flush and close the file."""
        self._file.close()
