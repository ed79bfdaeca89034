"""The outputs of batch scoring, and the per-chunk results they are written from.

Inputs are read by the project's one ``.h5ad`` row reader, :class:`model.h5ad.H5adRows` (row ranges
straight from HDF5, every block structurally checked; column-major files are refused with a fix).

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
from anndata.io import write_elem

from model.bundle import UNKNOWN_LABEL
from model.errors import CellTypeError, InputError
from model.h5ad import decode_text
from model.novelty import UNKNOWN_REASONS
from model.outputs import (
    CELL_ID_COLUMN,
    CONFIDENCE_COLUMN,
    LABEL_COLUMN,
    PROBABILITY_COLUMN_PREFIX,
    UNKNOWN_REASON_COLUMN,
)

OUTPUT_SUFFIXES = (".h5ad", ".csv", ".parquet")
"""Output formats, by file suffix."""

SOURCE_FILE_COLUMN = "source_file"
"""Table outputs: the input file the cell came from, as given on the command line."""


class ScoringError(CellTypeError):
    """A scoring run cannot start or go on: bad output path, stale resume state, unreachable scheduler."""


@dataclass(frozen=True)
class ResultColumns:
    """The per-cell result columns for a model's classes and a requested top-k.

    Always :data:`LABEL_COLUMN`, :data:`CONFIDENCE_COLUMN` and :data:`UNKNOWN_REASON_COLUMN` (why the cell
    is ``"Unknown"``, ``""`` otherwise; a categorical over :data:`model.novelty.UNKNOWN_REASONS`). Then, for ``0 < top_k < n_classes``,
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
        names = [LABEL_COLUMN, CONFIDENCE_COLUMN, UNKNOWN_REASON_COLUMN]
        for rank in range(1, self.n_top + 1):
            names += [f"top{rank}_label", f"top{rank}_prob"]
        return names + self.probability_columns


@dataclass(frozen=True)
class ChunkResult:
    """Predictions for a contiguous range of cells.

    Attributes:
        label_codes: per cell, the index of its predicted label in ``ResultColumns.label_categories``.
        confidence: per cell, the probability of the most likely class.
        reason_codes: per cell, the index of its ``unknown_reason`` in :data:`model.novelty.UNKNOWN_REASONS`.
        top_index: ``(n, n_top)`` class indices of the k most likely classes (top-k mode).
        top_prob: ``(n, n_top)`` their probabilities (top-k mode).
        probabilities: ``(n, n_classes)`` every class's probability (per-class mode), else ``(n, 0)``.
    """

    label_codes: np.ndarray
    confidence: np.ndarray
    reason_codes: np.ndarray
    top_index: np.ndarray
    top_prob: np.ndarray
    probabilities: np.ndarray

    FIELDS = ("label_codes", "confidence", "reason_codes", "top_index", "top_prob", "probabilities")

    @classmethod
    def empty(cls, columns: ResultColumns) -> ChunkResult:
        """A result for no cells, shaped for ``columns``."""
        n_probabilities = len(columns.classes) if columns.per_class else 0
        return cls(
            label_codes=np.zeros(0, dtype=np.int32),
            confidence=np.zeros(0, dtype=np.float32),
            reason_codes=np.zeros(0, dtype=np.int8),
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

    def arrow_table(self, columns: ResultColumns, cell_ids: np.ndarray, source: str) -> pa.Table:
        """The table-output rows (``cell_id``, ``source_file``, then the result columns), built in arrow.

        The rows of :meth:`frame` with the two key columns, labels and ids as plain strings, made without
        pandas or a Python string per cell: label columns are taken from their categories by code.
        """
        categories = pa.array(columns.label_categories, type=pa.string())
        arrays: dict[str, pa.Array] = {
            CELL_ID_COLUMN: pa.array(np.asarray(cell_ids, dtype=object), type=pa.string()),
            SOURCE_FILE_COLUMN: pa.repeat(pa.scalar(source, type=pa.string()), self.n_cells),
            LABEL_COLUMN: categories.take(self.label_codes),
            CONFIDENCE_COLUMN: pa.array(self.confidence),
            UNKNOWN_REASON_COLUMN: pa.array(UNKNOWN_REASONS, type=pa.string()).take(self.reason_codes),
        }
        classes = pa.array(columns.classes, type=pa.string())
        for rank in range(columns.n_top):
            arrays[f"top{rank + 1}_label"] = classes.take(np.ascontiguousarray(self.top_index[:, rank]))
            arrays[f"top{rank + 1}_prob"] = pa.array(np.ascontiguousarray(self.top_prob[:, rank]))
        for position, name in enumerate(columns.probability_columns):
            arrays[name] = pa.array(np.ascontiguousarray(self.probabilities[:, position]))
        return pa.table(arrays)

    def frame(self, columns: ResultColumns) -> pd.DataFrame:
        """The result columns as a DataFrame (labels as categoricals)."""
        categories = columns.label_categories
        data: dict[str, Any] = {
            LABEL_COLUMN: pd.Categorical.from_codes(self.label_codes, categories),
            CONFIDENCE_COLUMN: self.confidence,
            UNKNOWN_REASON_COLUMN: pd.Categorical.from_codes(self.reason_codes, list(UNKNOWN_REASONS)),
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
    """Writes the per-cell table (CSV or parquet) chunk by chunk, so memory stays flat.

    ``metadata`` goes into a parquet file's schema metadata (CSV has none).
    """

    def __init__(self, path: Path, suffix: str, metadata: dict[bytes, bytes] | None = None) -> None:
        self.path = path
        self.suffix = suffix
        self.metadata = metadata
        self._parquet: pq.ParquetWriter | None = None
        self._wrote_header = False

    def write(self, frame: pd.DataFrame | pa.Table) -> None:
        """Append rows: a DataFrame to a CSV file, an arrow table (:meth:`ChunkResult.arrow_table`) to parquet."""
        if self.suffix == ".csv":
            frame.to_csv(
                self.path, mode="a" if self._wrote_header else "w", header=not self._wrote_header, index=False
            )
            self._wrote_header = True
            return
        if self._parquet is None:
            schema = frame.schema if self.metadata is None else frame.schema.with_metadata(self.metadata)
            self._parquet = pq.ParquetWriter(self.path, schema)
        self._parquet.write_table(frame)

    def close(self) -> None:
        """Finish the file (parquet footer)."""
        if self._parquet is not None:
            self._parquet.close()


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
        if not isinstance(obs, h5py.Group) or decode_text(obs.attrs.get("encoding-type", "")) != "dataframe":
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
            if name in label_columns or name == UNKNOWN_REASON_COLUMN:
                reasons = name == UNKNOWN_REASON_COLUMN
                group = obs.create_group(name)
                group.attrs.update(
                    {"encoding-type": "categorical", "encoding-version": "0.2.0", "ordered": False}
                )
                write_elem(group, "categories", np.asarray(UNKNOWN_REASONS if reasons else categories, dtype=object))
                self._datasets[name] = self._array(group, "codes", n_cells, np.int8 if reasons else code_dtype)
            else:
                self._datasets[name] = self._array(obs, name, n_cells, np.float32)
        order = [decode_text(c) for c in np.atleast_1d(obs.attrs.get("column-order", np.array([], dtype=object)))]
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
        self._datasets[UNKNOWN_REASON_COLUMN][start:stop] = result.reason_codes
        for rank in range(self._columns.n_top):
            self._datasets[f"top{rank + 1}_label"][start:stop] = result.top_index[:, rank]
            self._datasets[f"top{rank + 1}_prob"][start:stop] = result.top_prob[:, rank]
        for position, name in enumerate(self._columns.probability_columns):
            self._datasets[name][start:stop] = result.probabilities[:, position]

    def close(self) -> None:
        """Flush and close the file."""
        self._file.close()
