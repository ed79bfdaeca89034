"""Reading an uploaded CSV (optionally gzip-compressed) of cells x genes into the same form as an ``.h5ad``.

Layout: a header row ``cell_id,GENE1,GENE2,...`` (the first header field is ignored), then one row per
cell: its id, then one number per gene. The file is read in chunks into a sparse matrix, and no more
than ``max_expanded_bytes`` of (decompressed) text is ever read, so a small ``.csv.gz`` cannot expand
without bound.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from pathlib import Path
from typing import IO

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from model.preprocessing import detect_input_kind
from service.errors import BodyTooLargeError, MalformedBodyError, RequestInputError
from service.h5ad_io import H5adCells

GZIP_MAGIC = b"\x1f\x8b"
"""First bytes of a gzip file (the name is not trusted to say whether it is compressed)."""
CHUNK_VALUES = 4_000_000
"""Values parsed per chunk (rows per chunk = this / number of genes), bounding the dense working set."""


class _ExpansionLimitExceeded(Exception):
    """More decompressed bytes than allowed were read."""


class _LimitedReader(io.RawIOBase):
    """A binary stream that refuses to yield more than ``limit`` bytes of ``source``."""

    def __init__(self, source: IO[bytes], limit: int) -> None:
        self._source = source
        self._limit = limit
        self._read = 0

    def readable(self) -> bool:
        """Always readable."""
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        """Fill ``buffer`` from the source; past the limit, raise."""
        data = self._source.read(len(buffer))
        self._read += len(data)
        if self._read > self._limit:
            raise _ExpansionLimitExceeded
        buffer[: len(data)] = data
        return len(data)


def read_csv_cells(
    path: str | os.PathLike[str], *, input_kind: str, max_cells: int, max_expanded_bytes: int
) -> H5adCells:
    """Read a saved CSV / CSV.gz upload (see the module docstring for the layout).

    Args:
        path: the saved upload.
        input_kind: ``"counts"``, ``"lognorm"`` or ``"auto"`` (detected from the values).
        max_cells: more cells than this is answered with 413.
        max_expanded_bytes: more (decompressed) text than this is answered with 413.
    """
    with Path(path).open("rb") as raw:
        compressed = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        source: IO[bytes] = gzip.GzipFile(fileobj=raw) if compressed else raw
        stream = io.BufferedReader(_LimitedReader(source, max_expanded_bytes), buffer_size=1 << 20)
        try:
            genes = _header(stream)
            matrix, cell_ids = _rows(stream, genes, max_cells)
        except _ExpansionLimitExceeded:
            raise BodyTooLargeError(
                f"the CSV file expands to more than {max_expanded_bytes} bytes of text; send fewer cells per "
                "upload, an .h5ad file (sparse), or use `celltype score` for large files"
            ) from None
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise MalformedBodyError(
                f"the compressed CSV file is damaged ({exc}); compress it again with gzip"
            ) from None
        except UnicodeDecodeError:
            raise MalformedBodyError("the CSV file is not UTF-8 text; save it as UTF-8 CSV") from None
    obs = pd.DataFrame(index=pd.Index(cell_ids, name=None))
    var = pd.DataFrame(index=pd.Index(genes, name=None))
    adata = anndata.AnnData(X=matrix, obs=obs, var=var)
    kind = detect_input_kind(matrix) if input_kind == "auto" else input_kind
    return H5adCells(adata, matrix, genes, cell_ids, kind)


def _header(stream: io.BufferedReader) -> list[str]:
    line = stream.readline().decode("utf-8-sig")
    if not line.strip():
        raise RequestInputError(
            "the CSV file is empty; its first row must be the header 'cell_id,GENE1,GENE2,...'"
        )
    fields = next(csv.reader([line]))
    genes = [field.strip() for field in fields[1:]]
    if not genes:
        raise RequestInputError(
            "the CSV header names no genes; the first row must be 'cell_id,GENE1,GENE2,...' "
            "(comma-separated, first column the cell ids)"
        )
    empty = [position + 2 for position, gene in enumerate(genes) if not gene]
    if empty:
        raise RequestInputError(
            f"the CSV header has empty gene names (columns {empty[:5]}); name every gene column"
        )
    return genes


def _rows(stream: io.BufferedReader, genes: list[str], max_cells: int) -> tuple[sp.csr_matrix, list[str]]:
    rows_per_chunk = max(1, CHUNK_VALUES // len(genes))
    blocks: list[sp.csr_matrix] = []
    cell_ids: list[str] = []
    try:
        chunks = pd.read_csv(
            stream,
            header=None,
            index_col=0,
            dtype={0: str},
            names=range(len(genes) + 1),
            chunksize=rows_per_chunk,
            skip_blank_lines=True,
        )
        for chunk in chunks:
            if chunk.empty:
                continue
            if len(cell_ids) + len(chunk) > max_cells:
                raise BodyTooLargeError(
                    f"the CSV file has more than {max_cells} cells, the most accepted per upload; send fewer "
                    "cells per upload (or use `celltype score` for whole files)"
                )
            blocks.append(sp.csr_matrix(_numbers(chunk, genes, first_row=len(cell_ids) + 2)))
            cell_ids.extend(str(cell) for cell in chunk.index)
    except pd.errors.ParserError as exc:
        raise RequestInputError(
            f"the CSV file could not be parsed ({exc}); every row needs a cell id and one value per gene "
            "of the header"
        ) from None
    if not cell_ids:
        raise RequestInputError("the CSV file has a header but no cells; add one row per cell below it")
    return sp.vstack(blocks, format="csr", dtype=np.float32), cell_ids


def _numbers(chunk: pd.DataFrame, genes: list[str], first_row: int) -> np.ndarray:
    converted = False
    for position, dtype in enumerate(chunk.dtypes):
        if pd.api.types.is_numeric_dtype(dtype):
            continue
        converted = True
        column = chunk.iloc[:, position]
        bad = np.flatnonzero((pd.to_numeric(column, errors="coerce").isna() & column.notna()).to_numpy())
        if bad.size:
            row = int(bad[0])
            raise RequestInputError(
                f"the CSV value {column.iloc[row]!r} (row {first_row + row}, gene {genes[position]!r}) is not "
                "a number; every value after the cell id must be a number"
            )
    return (chunk.apply(pd.to_numeric) if converted else chunk).to_numpy(dtype=np.float32)
