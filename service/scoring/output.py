"""Assembling the output from the saved chunks and moving it into place with one atomic rename."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from model.novelty import UNKNOWN_REASONS
from model.outputs import CELL_ID_COLUMN
from service.provenance_io import parquet_metadata, write_csv_sidecar, write_h5ad_provenance
from service.scoring.inputs import PreparedInput
from service.scoring.tasks import ChunkTask
from service.scoring.workdir import WorkDirectory
from service.scoring_io import (
    SOURCE_FILE_COLUMN,
    ChunkResult,
    ObsColumnsWriter,
    ResultColumns,
    ScoringError,
    TableWriter,
)


def _table(
    result: ChunkResult, columns: ResultColumns, cell_ids: np.ndarray, source: Path, suffix: str
) -> pd.DataFrame | pa.Table:
    """The table rows of ``result``: an arrow table for parquet (no pandas on the way), else a DataFrame."""
    if suffix == ".parquet":
        return result.arrow_table(columns, cell_ids, str(source))
    frame = result.frame(columns)
    frame.insert(0, SOURCE_FILE_COLUMN, np.full(result.n_cells, str(source), dtype=object))
    frame.insert(0, CELL_ID_COLUMN, cell_ids)
    return frame


def write_output(
    out: Path,
    suffix: str,
    inputs: list[PreparedInput],
    tasks: list[ChunkTask],
    workdir: WorkDirectory,
    columns: ResultColumns,
    provenance: dict[str, Any],
) -> tuple[dict[str, int], dict[str, int]]:
    """Assemble ``out`` from the chunks saved in ``workdir``, move it into place.

    ``provenance`` (:mod:`model.provenance`) goes into ``uns['celltype']`` of an ``.h5ad``, the schema
    metadata of a parquet file, or the sidecar ``OUT.csv.json`` of a CSV file (written first).

    Returns the cells per label (most frequent first, only labels given) and per ``unknown_reason``
    (every reason, in the order of :data:`model.novelty.UNKNOWN_REASONS`, without ``""``).
    """
    temporary = workdir.temporary_output(out)
    categories = columns.label_categories
    counts = np.zeros(len(categories), dtype=np.int64)
    reason_counts = np.zeros(len(UNKNOWN_REASONS), dtype=np.int64)
    try:
        if suffix == ".h5ad":
            writer: ObsColumnsWriter | TableWriter = ObsColumnsWriter(
                inputs[0].path, temporary, columns, inputs[0].reader.n_cells
            )
        else:
            writer = TableWriter(temporary, suffix, metadata=parquet_metadata(provenance))
        try:
            for task in tasks:
                result = ChunkResult.load(workdir.chunk_file(task))
                counts += np.bincount(result.label_codes, minlength=len(categories))
                reason_counts += np.bincount(result.reason_codes, minlength=len(UNKNOWN_REASONS))
                if isinstance(writer, ObsColumnsWriter):
                    writer.write(task.start, result)
                else:
                    item = inputs[task.input_index]
                    writer.write(
                        _table(result, columns, item.reader.cell_ids(task.start, task.stop), item.path, suffix)
                    )
            if not tasks and isinstance(writer, TableWriter):
                writer.write(
                    _table(ChunkResult.empty(columns), columns, np.array([], dtype=object), Path(), suffix)
                )
        finally:
            writer.close()
        if suffix == ".h5ad":
            write_h5ad_provenance(temporary, provenance)
        elif suffix == ".csv":
            write_csv_sidecar(out, provenance)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, out)
    except OSError as exc:
        raise ScoringError(f"cannot write {out}: {exc}") from None
    ranked = sorted(zip(categories, counts.tolist(), strict=True), key=lambda item: -item[1])
    reasons = dict(zip(UNKNOWN_REASONS[1:], reason_counts[1:].tolist(), strict=True))
    return {label: count for label, count in ranked if count}, reasons
