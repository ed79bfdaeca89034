"""The one ``.h5ad`` reader: row ranges of ``X`` or a layer, gene and cell names, straight from HDF5.

Training (:mod:`training.data`), batch scoring (``celltype score``) and uploads to the service all read
``.h5ad`` files through :class:`H5adRows`. This module uses h5py directly (and anndata's element reader
for the small ``obs``/``var`` tables): reading rows from the HDF5 datasets of a CSR matrix (``data``,
``indices``, ``indptr``) or a dense array keeps memory proportional to the rows asked for, never the file.

Every block of CSR rows is structurally checked as it is read (:func:`model.sparse.check_row_pointers`
on its slice of row pointers before its values are read, then :func:`model.sparse.check_csr_structure`
on the block), so a corrupt file is refused with a message naming the first bad row instead of crashing
a compiled kernel. String or other non-numeric matrices are refused when the file is opened.

:func:`inspect_h5ad` is the safety check for files from untrusted clients: it refuses (before anything is
read) a file that is not HDF5, one that reaches outside itself (external links, external or virtual
datasets) and one whose datasets expand beyond a limit (a small gzip file can hold gigabytes of zeros).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata.io import read_elem

from model.errors import InputError
from model.sparse import SparseStructureError, check_csr_structure, check_row_pointers

FIX = "re-write the file with anndata (adata.write_h5ad)"
"""How to repair a structurally broken file, for the error messages."""


class NotH5adError(InputError):
    """The file is not an HDF5 file at all."""


class NotAnnDataError(InputError):
    """The file is HDF5 but not an AnnData ``.h5ad`` (no ``X``/``obs``/``var`` as anndata writes them)."""


class H5adTooLargeError(InputError):
    """The file's datasets expand to more bytes than accepted."""


class H5adExternalDataError(InputError):
    """The file refers to data outside itself (external links, external or virtual datasets)."""


def inspect_h5ad(path: str | os.PathLike[str], max_expanded_bytes: int) -> None:
    """Refuse a file that is not HDF5, reaches outside itself or expands beyond ``max_expanded_bytes``.

    Raises:
        NotH5adError: not HDF5, or its tree cannot be walked (damaged).
        H5adExternalDataError: it refers to data outside itself.
        H5adTooLargeError: its datasets expand beyond the limit.
    """
    try:
        handle = h5py.File(path, "r")
    except OSError:
        raise NotH5adError("the file is not an HDF5/.h5ad file; send a file written by anndata") from None
    with handle:
        problems: list[str] = []
        expanded = 0

        def inspect(name: str, link: Any) -> None:
            nonlocal expanded
            if isinstance(link, h5py.ExternalLink):
                problems.append(f"'{name}' is an external link")
                return
            if not isinstance(link, h5py.HardLink):
                return
            node = handle[name]
            if isinstance(node, h5py.Dataset):
                if node.external:
                    problems.append(f"'{name}' is stored in an external file")
                elif node.is_virtual:
                    problems.append(f"'{name}' is a virtual dataset")
                expanded += node.size * node.dtype.itemsize

        try:
            handle.visititems_links(inspect)
        except (OSError, KeyError, RuntimeError) as exc:
            raise NotH5adError(f"the .h5ad file is damaged ({exc})") from None
    if problems:
        raise H5adExternalDataError(
            "the .h5ad file refers to data outside itself, which is never read: "
            + "; ".join(problems[:5])
            + ". Save a self-contained file (anndata's write_h5ad)"
        )
    if expanded > max_expanded_bytes:
        raise H5adTooLargeError(
            f"the .h5ad file expands to {expanded} bytes, more than the {max_expanded_bytes} accepted; "
            "send fewer cells per upload (or use `celltype score` for large files)"
        )


@dataclass(frozen=True)
class RowBlock:
    """Rows ``start .. start + n_rows - 1`` of a matrix, as stored: CSR parts or a dense array.

    A sparse block has passed :func:`model.sparse.check_csr_structure`.

    Attributes:
        start: the first row's index in the file.
        n_rows: number of rows.
        n_columns: number of columns (the file's genes).
        values: CSR ``data`` (1-D) or the dense rows (2-D), in the file's dtype.
        indices: CSR column indices, int32 (``None`` when dense).
        indptr: CSR row pointers rebased to 0 (``None`` when dense).
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

    def csr(self, columns: np.ndarray | None = None) -> sp.csr_matrix:
        """The rows as a float32 CSR matrix, over ``columns`` (distinct file columns, in that order) if given.

        Dense rows are converted (explicit zeros dropped); sparse rows keep their stored entries.
        """
        if not self.is_sparse:
            values = np.asarray(self.values, dtype=np.float32)
            return sp.csr_matrix(values if columns is None else values[:, columns])
        data = self.values if self.values.dtype == np.float32 else self.values.astype(np.float32)
        indices, indptr, n_columns = self.indices, self.indptr, self.n_columns
        if columns is not None:
            target = np.full(self.n_columns, -1, dtype=np.int32)
            target[columns] = np.arange(len(columns), dtype=np.int32)
            mapped = target[indices]
            keep = mapped >= 0
            data, indices = data[keep], mapped[keep]
            kept_before = np.zeros(keep.size + 1, dtype=np.int64)
            np.cumsum(keep, out=kept_before[1:])
            indptr, n_columns = kept_before[indptr], len(columns)
        return sp.csr_matrix((data, indices, indptr), shape=(self.n_rows, n_columns))


def decode_text(value: Any) -> str:
    """An HDF5 attribute or string value as ``str`` (h5py gives ``bytes`` for some)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def layer_names(handle: h5py.File) -> list[str]:
    """The names of the file's ``layers``, sorted (empty when it has none)."""
    layers = handle.get("layers")
    return sorted(layers) if isinstance(layers, h5py.Group) else []


class H5adRows:
    """Row access to the matrix (``X`` or a layer) of an ``.h5ad`` file, without loading it.

    Args:
        source: the file's path (opened here, closed by :meth:`close`) or an open ``h5py.File`` (left open).
        layer: a key of ``layers`` to read instead of ``X``.
        allow_csc: read a column-major (CSC) matrix too. Its rows are scattered over the whole file, so
            each :meth:`read` reads (and checks) the whole matrix; without this, CSC is refused with a
            message saying how to convert it.
        layer_hint: appended to the message for a missing layer (how to choose another one).
        name: how messages name the file (default: its path; a service names an upload without its
            temporary path).

    Raises:
        InputError: the file is missing or not HDF5 (:class:`NotH5adError`), not AnnData
            (:class:`NotAnnDataError`), the layer does not exist, the matrix is CSC (unless allowed), of an
            unknown encoding, not numeric or structurally broken (:class:`~model.sparse.SparseStructureError`),
            or ``obs``/``var`` do not match its shape.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | h5py.File,
        layer: str | None = None,
        *,
        allow_csc: bool = False,
        layer_hint: str = "(leave out --layer to score X)",
        name: str | None = None,
    ) -> None:
        self.layer = layer
        self.name = name or str(source.filename if isinstance(source, h5py.File) else source)
        self._owns_file = not isinstance(source, h5py.File)
        if isinstance(source, h5py.File):
            self.path = Path(source.filename)
            self._file = source
        else:
            self.path = Path(source)
            if not self.path.is_file():
                raise InputError(f"{self.name}: no such file; give the path of an .h5ad file")
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as exc:
                raise NotH5adError(f"{self.name}: cannot be read as an .h5ad (HDF5) file: {exc}") from None
        try:
            self._open_matrix(allow_csc, layer_hint)
            self.genes = [str(g) for g in self.var_frame().index]
            if len(self.genes) != self.n_genes:
                raise InputError(
                    f"{self.name}: var names {len(self.genes)} genes but the matrix has {self.n_genes} columns"
                )
            self._obs_names = self._obs_index()
        except BaseException:
            self.close()
            raise

    @property
    def element_name(self) -> str:
        """Where the matrix is stored: ``"X"`` or ``"layers/NAME"``."""
        return "X" if self.layer is None else f"layers/{self.layer}"

    @property
    def _what(self) -> str:
        return f"{self.name} ({self.element_name})"

    def _open_matrix(self, allow_csc: bool, layer_hint: str) -> None:
        name = self.element_name
        if name not in self._file:
            if self.layer is None:
                raise NotAnnDataError(f"{self.name}: has no X matrix; is it an AnnData .h5ad file?")
            layers = layer_names(self._file)
            raise InputError(f"{self.name}: has no layer {self.layer!r}; its layers are {layers or 'none'} {layer_hint}")
        element = self._file[name]
        self._data = self._indices = self._indptr = self._dense = None
        self.encoding = "dense"
        if isinstance(element, h5py.Dataset):
            if element.ndim != 2:
                raise InputError(f"{self.name}: {name} is {element.ndim}-D; expected a cells x genes matrix")
            _check_numeric(element.dtype, f"{self.name}: {name}")
            self._dense = element
            self.n_cells, self.n_genes = (int(n) for n in element.shape)
            return
        encoding = decode_text(element.attrs.get("encoding-type", element.attrs.get("h5sparse_format", "")))
        if encoding in ("csc_matrix", "csc") and not allow_csc:
            raise InputError(
                f"{self.name}: {name} is stored column by column (CSC), which cannot be read by cells; "
                "convert it once, e.g. adata.X = adata.X.tocsr(); adata.write_h5ad(...)"
            )
        parts = {"data", "indices", "indptr"}
        if encoding not in ("csr_matrix", "csr", "csc_matrix", "csc") or not parts <= set(element):
            raise InputError(f"{self.name}: {name} has an unknown encoding {encoding!r}; expected CSR or dense")
        self.encoding = "csc" if encoding.startswith("csc") else "csr"
        shape = element.attrs.get("shape", element.attrs.get("h5sparse_shape"))
        try:
            self.n_cells, self.n_genes = (int(n) for n in np.asarray(shape).reshape(2))
        except (TypeError, ValueError):
            raise SparseStructureError(f"{self._what}: its shape attribute {shape!r} is not (cells, genes); {FIX}") from None
        if self.n_cells < 0 or self.n_genes < 0:
            raise SparseStructureError(f"{self._what}: its declared shape {(self.n_cells, self.n_genes)} is negative; {FIX}")
        self._data, self._indices, self._indptr = (element[part] for part in ("data", "indices", "indptr"))
        for part in (self._data, self._indices, self._indptr):
            if not isinstance(part, h5py.Dataset) or part.ndim != 1:
                raise SparseStructureError(f"{self._what}: its CSR parts must be 1-D arrays; {FIX}")
        _check_numeric(self._data.dtype, f"{self.name}: {name}")
        n_pointers = (self.n_genes if self.encoding == "csc" else self.n_cells) + 1
        self.nnz = int(self._data.shape[0])
        if self._indptr.shape[0] != n_pointers:
            rows = "columns" if self.encoding == "csc" else "rows"
            raise SparseStructureError(
                f"{self._what}: its shape declares {n_pointers - 1} {rows} but it has {self._indptr.shape[0]} "
                f"row pointers; the file is corrupt — {FIX}"
            )
        if self._indices.shape[0] != self.nnz:
            raise SparseStructureError(
                f"{self._what}: it has {self.nnz} values but {self._indices.shape[0]} column indices; "
                f"the file is corrupt — {FIX}"
            )
        for label, part in (("row pointers", self._indptr), ("column indices", self._indices)):
            if part.dtype.kind not in "iu":
                raise SparseStructureError(
                    f"{self._what}: its {label} hold {part.dtype} values, not integers; the file is corrupt — {FIX}"
                )
        ends = np.asarray(self._indptr[[0, n_pointers - 1]] if n_pointers > 1 else self._indptr[:1])
        if int(ends[0]) != 0 or int(ends[-1]) != self.nnz:
            raise SparseStructureError(
                f"{self._what}: its row pointers run from {int(ends[0])} to {int(ends[-1])} but it stores "
                f"{self.nnz} values (they must run from 0 to {self.nnz}); the file is corrupt — {FIX}"
            )

    def var_frame(self) -> pd.DataFrame:
        """The ``var`` table (genes: index and columns)."""
        return self._table("var", "gene names")

    def obs_frame(self) -> pd.DataFrame:
        """The ``obs`` table (cells: index and columns)."""
        return self._table("obs", "cell names")

    def _table(self, key: str, what: str) -> pd.DataFrame:
        if key not in self._file:
            raise NotAnnDataError(f"{self.name}: has no {key} ({what})")
        try:
            return read_elem(self._file[key])
        except Exception as exc:  # anndata's readers raise several types for a malformed table
            raise NotAnnDataError(
                f"{self.name}: its {key} table cannot be read ({type(exc).__name__}: {exc})"
            ) from None

    def _obs_index(self) -> h5py.Dataset | np.ndarray:
        obs = self._file.get("obs")
        if isinstance(obs, h5py.Group) and "_index" in obs.attrs and decode_text(obs.attrs["_index"]) in obs:
            names = obs[decode_text(obs.attrs["_index"])]
        else:
            names = np.asarray(self.obs_frame().index.astype(str), dtype=object)
        if names.ndim != 1 or names.shape[0] != self.n_cells:
            raise InputError(f"{self.name}: obs names {names.shape[0]} cells but the matrix has {self.n_cells} rows")
        return names

    @property
    def is_sparse(self) -> bool:
        """True when the matrix is stored sparse (CSR, or CSC when allowed)."""
        return self._dense is None

    @property
    def dtype(self) -> np.dtype:
        """The stored values' dtype."""
        return (self._data if self._dense is None else self._dense).dtype

    @property
    def stored_values(self) -> int:
        """Values stored: the non-zeros of a sparse matrix, every entry of a dense one."""
        return self.nnz if self._dense is None else self.n_cells * self.n_genes

    def cell_ids(self, start: int, stop: int) -> np.ndarray:
        """The obs names of rows ``start .. stop - 1`` (object array of str)."""
        names = self._obs_names
        if isinstance(names, h5py.Dataset):
            if names.dtype.kind == "O" or h5py.check_string_dtype(names.dtype) is not None:
                return np.asarray(names.asstr()[start:stop], dtype=object)
            return np.asarray([str(v) for v in names[start:stop]], dtype=object)
        return names[start:stop]

    def read(self, start: int, stop: int) -> RowBlock:
        """Rows ``start .. stop - 1``, structurally checked.

        Raises:
            SparseStructureError: the rows' CSR structure is broken (the message names the first bad row).
            InputError: the rows cannot be read (a damaged file).
        """
        if not 0 <= start <= stop <= self.n_cells:
            raise ValueError(f"rows {start}..{stop - 1} are outside the {self.n_cells} cells")
        try:
            if self._dense is not None:
                return RowBlock(start, stop - start, self.n_genes, self._dense[start:stop])
            if self.encoding == "csc":
                return self._read_csc(start, stop)
            pointers = self._indptr[start : stop + 1]
            check_row_pointers(pointers, self.nnz, what=self._what, fix=FIX, first_row=start)
            pointers = pointers.astype(np.int64)
            low, high = int(pointers[0]), int(pointers[-1])
            indices, values = self._indices[low:high], self._data[low:high]
            rebased = pointers - low
            check_csr_structure(
                rebased, indices, values, (stop - start, self.n_genes), what=self._what, fix=FIX, first_row=start
            )
        except OSError as exc:
            raise InputError(f"{self.name}: cannot read cells {start}..{stop - 1}: {exc}") from None
        if indices.dtype != np.int32 and self.n_genes <= np.iinfo(np.int32).max:
            indices = indices.astype(np.int32)
        if high - low <= np.iinfo(np.int32).max:
            rebased = rebased.astype(np.int32)
        return RowBlock(start, stop - start, self.n_genes, values, indices, rebased)

    def _read_csc(self, start: int, stop: int) -> RowBlock:
        """Rows of a CSC matrix: the whole matrix is read and checked (as its transpose), then sliced."""
        pointers, indices, values = self._indptr[:], self._indices[:], self._data[:]
        check_csr_structure(
            pointers, indices, values, (self.n_genes, self.n_cells), what=f"{self._what} (CSC, by gene)", fix=FIX
        )
        rows = sp.csc_matrix((values, indices, pointers), shape=(self.n_cells, self.n_genes))[start:stop].tocsr()
        return RowBlock(start, stop - start, self.n_genes, rows.data, rows.indices, rows.indptr)

    def read_csr(self, start: int, stop: int, columns: np.ndarray | None = None) -> sp.csr_matrix:
        """Rows ``start .. stop - 1`` as a checked float32 CSR matrix, over ``columns`` if given."""
        return self.read(start, stop).csr(columns)

    def close(self) -> None:
        """Close the file (if it was opened here)."""
        if self._owns_file:
            self._file.close()

    def __enter__(self) -> H5adRows:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _check_numeric(dtype: np.dtype, what: str) -> None:
    if dtype.kind not in "biuf":
        raise InputError(
            f"{what} holds {dtype} values; the expression matrix must be numeric (counts or log-normalized values)"
        )
