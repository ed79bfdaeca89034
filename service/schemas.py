"""What requests and responses look like, and turning request bodies into matrices quickly.

The pydantic models document the API (``/docs``) and validate small bodies. Large bodies are never
validated value by value through pydantic: a 1000 x 2000 JSON matrix would take longer to validate
than to predict. :class:`JsonBody` reads the list of rows of a request with a compiled (numba) reader
straight into float32, the rest of the document and other numeric arrays with simdjson, and checks
the document's structure exactly (see :meth:`JsonBody.structure_verified`); the few documents it
cannot vouch for are re-read strictly with orjson, which also words the error messages.
"""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numba
import numpy as np
import orjson
import scipy.sparse as sp
import simdjson
from fastapi import HTTPException
from numpy.lib import format as npy_format
from pydantic import BaseModel, ConfigDict, Field

from model.preprocessing import INPUT_KINDS

NPZ_MEDIA_TYPE = "application/x-npz"
"""Content type of the binary predict body: ``numpy.savez`` output."""

JsonPath = tuple[str, ...]
T = TypeVar("T")


# --------------------------------------------------------------------------------------------------
# Documented request and response shapes
# --------------------------------------------------------------------------------------------------


class CsrCells(BaseModel):
    """Cells as a CSR sparse matrix over ``genes``: row ``i`` holds ``data[indptr[i]:indptr[i+1]]``
    at gene columns ``indices[indptr[i]:indptr[i+1]]``; the number of cells is ``len(indptr) - 1``."""

    indptr: list[int] = Field(description="Row pointers, starting at 0, non-decreasing, length n_cells + 1.")
    indices: list[int] = Field(description="Gene column of each stored value (0-based, < len(genes)).")
    data: list[float] = Field(description="The stored values (raw counts unless input is 'lognorm').")


class PredictRequest(BaseModel):
    """A prediction request: exactly one of ``cells`` (dense rows) or ``csr`` (sparse)."""

    model_config = ConfigDict(extra="forbid")

    genes: list[str] = Field(description="Gene names of the columns, in order (any order; extra genes are ignored).")
    cells: list[list[float]] | None = Field(
        None, description="One row per cell, one value per gene, in the order of `genes`."
    )
    csr: CsrCells | None = Field(None, description="The cells as a CSR sparse matrix (for wide, sparse requests).")
    cell_ids: list[str] | None = Field(None, description="Optional id per cell, echoed in the predictions.")
    input: Literal["counts", "lognorm"] = Field(
        "counts", description="'counts': raw counts (normalized by the service); 'lognorm': log1p(CP10k)."
    )
    top_k: int | None = Field(None, ge=1, description="Also return the k most likely cell types per cell.")
    return_probabilities: bool = Field(False, description="Also return every cell type's probability.")
    threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="Confidence below which the label is 'Unknown' (default: the model's)."
    )


class RankedLabel(BaseModel):
    """One of a cell's most likely types."""

    label: str
    probability: float


class Prediction(BaseModel):
    """The prediction for one cell."""

    cell_id: str | None = Field(None, description="Present when the request named its cells.")
    label: str = Field(description="Predicted cell type, or 'Unknown' below the confidence threshold.")
    confidence: float = Field(description="Calibrated probability of the most likely cell type.")
    probabilities: dict[str, float] | None = Field(None, description="With return_probabilities.")
    top_k: list[RankedLabel] | None = Field(None, description="With top_k.")


class GeneOverlap(BaseModel):
    """How the request's genes matched the model's."""

    n_model_genes: int
    n_input_genes: int
    n_matched: int
    overlap: float
    n_missing: int
    missing_examples: list[str]
    n_ignored: int


class ModelSummary(BaseModel):
    """Which model answered."""

    model_config = ConfigDict(extra="allow")

    name: str | None = None
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    uri: str | None = None
    bundle_sha256: str | None = None


class PredictResponse(BaseModel):
    """Predictions, one per cell in request order."""

    model: ModelSummary
    predictions: list[Prediction]
    gene_overlap: GeneOverlap


class ErrorResponse(BaseModel):
    """Every error answer: ``detail`` says what was wrong and how to fix it."""

    detail: Any


class ExpectedInput(BaseModel):
    """What a prediction request must look like."""

    preprocessing: dict[str, Any]
    input_kinds: list[str]
    default_input: str
    min_gene_overlap: float
    max_cells_per_request: int
    max_body_bytes: int
    content_types: dict[str, list[str]]


class ModelDescription(ModelSummary):
    """Everything a client needs to know about the served model."""

    aliases: list[str] | None = None
    labels: list[str]
    n_genes: int
    gene_list_hash: str
    expected_input: ExpectedInput
    unknown_label: str
    unknown_threshold: float
    temperature: float
    norm: str
    holdout_scores: dict[str, Any] | None = None
    validation_scores: dict[str, Any] | None = None
    train_batches: list[str] | None = None
    holdout_batches: list[str] | None = None
    datasets: Any = None
    trained_at: str | None = None
    loaded_at: str


class ModelGenes(BaseModel):
    """The model's genes, in the order of its input."""

    genes: list[str]
    gene_list_hash: str


class ReloadResponse(BaseModel):
    """Outcome of a reload: ``reloaded`` (a new version serves now) or ``unchanged``."""

    status: Literal["reloaded", "unchanged"]
    previous: ModelSummary | None
    current: ModelSummary


def openapi_request_body(model: type[BaseModel], binary_types: Iterable[str] = ()) -> dict[str, Any]:
    """An OpenAPI ``requestBody`` documenting ``model`` as JSON (and raw binary ``binary_types``).

    The routes read their bodies themselves (see :class:`JsonBody`), so FastAPI does not see the model;
    the schema's ``$defs`` are inlined to keep the document self-contained.
    """
    schema = _inline_defs(model.model_json_schema())
    content: dict[str, Any] = {"application/json": {"schema": schema}}
    for media_type in binary_types:
        content[media_type] = {"schema": {"type": "string", "format": "binary"}}
    return {"requestBody": {"required": True, "content": content}}


def _inline_defs(schema: dict[str, Any]) -> dict[str, Any]:
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            reference = node.get("$ref", "")
            if reference.startswith("#/$defs/"):
                return resolve(definitions[reference.rsplit("/", 1)[1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)


# --------------------------------------------------------------------------------------------------
# Decoded prediction input
# --------------------------------------------------------------------------------------------------


@dataclass
class PredictionInput:
    """A decoded prediction request, ready for the model.

    Attributes:
        matrix: cells x genes, float32 (dense) or CSR.
        genes: the column names; ``None`` means the model's genes in the model's order.
        cell_ids: optional id per cell.
        input_kind: ``"counts"`` or ``"lognorm"``.
        top_k: how many ranked labels to return per cell (``None`` = none).
        return_probabilities: return every class probability.
        threshold: confidence threshold override.
    """

    matrix: np.ndarray | sp.csr_matrix
    genes: list[str] | None
    cell_ids: list[str] | None = None
    input_kind: str = "counts"
    top_k: int | None = None
    return_probabilities: bool = False
    threshold: float | None = None

    @property
    def n_cells(self) -> int:
        """Number of cells."""
        return int(self.matrix.shape[0])


def bad_request(detail: str, status_code: int = 422) -> HTTPException:
    """The exception for a request the client must fix (422 unless said otherwise)."""
    return HTTPException(status_code=status_code, detail=detail)


def too_many_cells(n_cells: int, max_cells: int) -> HTTPException:
    """413 for a request with more cells than the service accepts at once."""
    return bad_request(
        f"the request has {n_cells} cells but at most {max_cells} are accepted per request; "
        "split it into several requests (or use `celltype score` for whole files)",
        413,
    )


def check_options(
    input_kind: Any, top_k: Any, return_probabilities: Any, threshold: Any
) -> tuple[str, int | None, bool, float | None]:
    """Validate the per-request options, raising 422 with a message that names the bad one."""
    if input_kind not in INPUT_KINDS:
        raise bad_request(f"'input' must be one of {', '.join(map(repr, INPUT_KINDS))}; got {input_kind!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise bad_request(f"'top_k' must be a positive integer; got {top_k!r}")
    if not isinstance(return_probabilities, bool):
        raise bad_request(f"'return_probabilities' must be true or false; got {return_probabilities!r}")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.0 <= threshold <= 1.0:
            raise bad_request(f"'threshold' must be a number between 0 and 1; got {threshold!r}")
        threshold = float(threshold)
    return input_kind, top_k, return_probabilities, threshold


def check_names(values: Any, field: str, *, expected: int | None = None) -> list[str]:
    """``values`` as a list of strings, or 422 naming ``field`` (``expected`` = required length)."""
    if not isinstance(values, list):
        raise bad_request(f"'{field}' must be a list of strings")
    if not set(map(type, values)) <= {str}:
        for position, value in enumerate(values):
            if not isinstance(value, str):
                raise bad_request(f"'{field}[{position}]' must be a string; got {value!r}")
    if expected is not None and len(values) != expected:
        raise bad_request(f"'{field}' has {len(values)} entries but there are {expected} cells; send one per cell")
    return values


def check_csr(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, n_genes: int, field: str) -> sp.csr_matrix:
    """A validated CSR matrix from its parts, or 422 saying which invariant is broken."""
    if indptr.size == 0 or indptr[0] != 0:
        raise bad_request(f"'{field}.indptr' must start with 0 and have one entry per cell plus one")
    if np.any(np.diff(indptr) < 0):
        raise bad_request(f"'{field}.indptr' must be non-decreasing")
    if not (indptr[-1] == indices.size == data.size):
        raise bad_request(
            f"'{field}': indptr ends at {int(indptr[-1])} but there are {indices.size} indices and "
            f"{data.size} values; all three must agree"
        )
    if not np.all(np.equal(np.mod(indptr, 1), 0)) or not np.all(np.equal(np.mod(indices, 1), 0)):
        raise bad_request(f"'{field}.indptr' and '{field}.indices' must be integers")
    if indices.size and (indices.min() < 0 or indices.max() >= n_genes):
        raise bad_request(f"'{field}.indices' must be gene columns between 0 and {n_genes - 1}")
    matrix = sp.csr_matrix(
        (data.astype(np.float32), indices.astype(np.int64), indptr.astype(np.int64)),
        shape=(indptr.size - 1, n_genes),
    )
    if not matrix.has_canonical_format:
        canonical = matrix.copy()
        canonical.sum_duplicates()
        if canonical.nnz != matrix.nnz:
            raise bad_request(f"'{field}' names the same gene more than once for a cell; send each value once")
        matrix = canonical
    return matrix



# --------------------------------------------------------------------------------------------------
# Compiled reader for the big matrix of a JSON body
# --------------------------------------------------------------------------------------------------

_POW10 = np.array([10.0**k for k in range(23)])


@numba.njit(cache=True, nogil=True)
def _matrix_start(buf: np.ndarray, key: np.ndarray, depth: int) -> int:
    """Offset of the ``[`` opening the value of the first key ``key`` at nesting ``depth``, else -1.

    Strings (with escapes) are skipped exactly, so text inside strings never matches.
    """
    n = buf.size
    level = 0
    i = 0
    while i < n:
        c = buf[i]
        if c == 34:
            j = i + 1
            while j < n:
                if buf[j] == 92:
                    j += 2
                    continue
                if buf[j] == 34:
                    break
                j += 1
            if j >= n:
                return -1
            if level == depth and j - i - 1 == key.size:
                same = True
                for k in range(key.size):
                    if buf[i + 1 + k] != key[k]:
                        same = False
                        break
                if same:
                    m = j + 1
                    while m < n and (buf[m] == 32 or buf[m] == 10 or buf[m] == 13 or buf[m] == 9):
                        m += 1
                    if m < n and buf[m] == 58:
                        m += 1
                        while m < n and (buf[m] == 32 or buf[m] == 10 or buf[m] == 13 or buf[m] == 9):
                            m += 1
                        return m if m < n and buf[m] == 91 else -1
            i = j + 1
            continue
        if c == 123 or c == 91:
            level += 1
        elif c == 125 or c == 93:
            level -= 1
        i += 1
    return -1


@numba.njit(cache=True, nogil=True)
def _parse_rows(buf: np.ndarray, start: int, out: np.ndarray, lengths: np.ndarray, pow10: np.ndarray) -> tuple:
    """Parse the JSON list of numeric rows opening at ``start`` into ``out`` (values) and ``lengths``.

    Returns ``(rows, values, end)`` with ``end`` just past the closing ``]``, or ``rows = -1`` for
    anything but plain JSON numbers in a list of lists (or more rows than ``lengths`` holds): the
    caller then reads the body the general way, which explains what is wrong. Integers of up to 18
    digits are exact; decimals with up to 18 significant digits and exponents within +-22 are computed in float64 (one
    rounding, or two beyond 2**53) before rounding to float32; other numbers also fall back.
    """
    end = buf.size
    i = start
    if i >= end or buf[i] != 91:
        return -1, 0, 0
    i += 1
    while i < end and (buf[i] == 32 or buf[i] == 10 or buf[i] == 13 or buf[i] == 9):
        i += 1
    row = 0
    v = 0
    if i < end and buf[i] == 93:
        i += 1
    else:
        while True:  # rows
            if i >= end or buf[i] != 91 or row >= lengths.size:
                return -1, 0, 0
            i += 1
            while i < end and (buf[i] == 32 or buf[i] == 10 or buf[i] == 13 or buf[i] == 9):
                i += 1
            count = 0
            if i < end and buf[i] == 93:
                i += 1
            else:
                while True:  # values
                    if i >= end or v >= out.size:
                        return -1, 0, 0
                    c = buf[i]
                    neg = c == 45
                    if neg:
                        i += 1
                        if i >= end:
                            return -1, 0, 0
                        c = buf[i]
                    mant = 0
                    digits = 0
                    exp10 = 0
                    if c == 48:
                        i += 1
                        if i < end and buf[i] >= 48 and buf[i] <= 57:
                            return -1, 0, 0
                    elif c >= 49 and c <= 57:
                        while i < end:
                            c = buf[i]
                            if c < 48 or c > 57:
                                break
                            if digits == 18:
                                return -1, 0, 0
                            mant = mant * 10 + (c - 48)
                            digits += 1
                            i += 1
                    else:
                        return -1, 0, 0
                    if i < end and buf[i] == 46:
                        i += 1
                        first = i
                        while i < end:
                            c = buf[i]
                            if c < 48 or c > 57:
                                break
                            if digits < 18:
                                mant = mant * 10 + (c - 48)
                                if mant != 0:
                                    digits += 1
                                exp10 -= 1
                            i += 1
                        if i == first:
                            return -1, 0, 0
                    if i < end and (buf[i] == 101 or buf[i] == 69):
                        i += 1
                        negative_exponent = False
                        if i < end and (buf[i] == 43 or buf[i] == 45):
                            negative_exponent = buf[i] == 45
                            i += 1
                        first = i
                        e = 0
                        while i < end:
                            c = buf[i]
                            if c < 48 or c > 57:
                                break
                            if e < 100000:
                                e = e * 10 + (c - 48)
                            i += 1
                        if i == first:
                            return -1, 0, 0
                        exp10 += -e if negative_exponent else e
                    if mant == 0:
                        value = 0.0
                    elif exp10 == 0:
                        value = float(mant)
                    elif exp10 > 0:
                        if exp10 > 22:
                            return -1, 0, 0
                        value = float(mant) * pow10[exp10]
                    else:
                        if exp10 < -22:
                            return -1, 0, 0
                        value = float(mant) / pow10[-exp10]
                    out[v] = -value if neg else value
                    v += 1
                    count += 1
                    while i < end and (buf[i] == 32 or buf[i] == 10 or buf[i] == 13 or buf[i] == 9):
                        i += 1
                    if i >= end:
                        return -1, 0, 0
                    if buf[i] == 44:
                        i += 1
                        while i < end and (buf[i] == 32 or buf[i] == 10 or buf[i] == 13 or buf[i] == 9):
                            i += 1
                    elif buf[i] == 93:
                        i += 1
                        break
                    else:
                        return -1, 0, 0
            lengths[row] = count
            row += 1
            while i < end and (buf[i] == 32 or buf[i] == 10 or buf[i] == 13 or buf[i] == 9):
                i += 1
            if i >= end:
                return -1, 0, 0
            if buf[i] == 44:
                i += 1
                while i < end and (buf[i] == 32 or buf[i] == 10 or buf[i] == 13 or buf[i] == 9):
                    i += 1
            elif buf[i] == 93:
                i += 1
                break
            else:
                return -1, 0, 0
    return row, v, i


def _extract_rows(body: bytes, path: JsonPath, max_rows: int) -> tuple[int, int, np.ndarray, np.ndarray] | None:
    """``(start, end, values, row_lengths)`` of the numeric rows at ``path`` read by the compiled reader,
    or ``None`` when it cannot vouch for them (the general reader then takes over)."""
    buffer = np.frombuffer(body, dtype=np.uint8)
    start = _matrix_start(buffer, np.frombuffer(path[-1].encode(), dtype=np.uint8), len(path))
    if start < 0:
        return None
    values = np.empty((len(body) - start) // 2 + 1, dtype=np.float32)
    lengths = np.empty(max_rows + 1, dtype=np.int64)
    rows, n_values, end = _parse_rows(buffer, start, values, lengths, _POW10)
    if rows < 0:
        return None
    return start, end, values[:n_values], lengths[:rows]


def warm_up() -> None:
    """Compile (or load from numba's cache) the matrix reader, so no request pays for it."""
    decode_predict_json(b'{"genes": ["a"], "cells": [[1], [2.5e-1]]}', 10)


# --------------------------------------------------------------------------------------------------
# Fast JSON reading
# --------------------------------------------------------------------------------------------------


class _StructureNotVerified(Exception):
    """The fast reader could not prove the document's structure; read it strictly instead."""


class JsonBody:
    """A JSON object whose large numeric arrays are read into NumPy without building Python objects.

    Small values (:meth:`value`) come back as Python objects. Numeric arrays (:meth:`matrix`,
    :meth:`vector`) are copied by simdjson straight into a buffer; simdjson flattens nested arrays
    silently, so after decoding, :meth:`structure_verified` counts the document's ``[`` bytes against
    the arrays that were accounted for. A mismatch (a hidden nested array, or a ``[`` written as an
    escape inside a string) means the caller must decode again with ``strict=True``, which checks
    every value in Python: slower, always exact.

    With ``rows_at=(path, max_rows)``, the list of rows at ``path`` (the bulk of a request) is first
    read by a compiled reader straight into float32 and replaced by ``[]`` before simdjson parses the
    rest; :meth:`matrix` returns it when the parsed document has that ``[]`` at ``path``.

    Raises HTTP 400 for malformed JSON, 422 for a document that is not an object.
    """

    def __init__(self, body: bytes, *, strict: bool = False, rows_at: tuple[JsonPath, int] | None = None) -> None:
        self.body = body
        self.strict = strict
        self._big: dict[JsonPath, int] = {}
        self._extracted: dict[JsonPath, tuple[np.ndarray, np.ndarray]] = {}
        if not body.strip():
            raise bad_request("the request body is empty; send a JSON object", 400)
        self._parsed_body = body
        if strict:
            try:
                self._root: Any = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise self._malformed(str(exc)) from None
        else:
            extracted = _extract_rows(body, *rows_at) if rows_at is not None else None
            if extracted is not None:
                start, end, values, lengths = extracted
                self._parsed_body = body[:start] + b"[]" + body[end:]
                self._extracted[rows_at[0]] = (values, lengths)
            try:
                self._root = simdjson.Parser().parse(self._parsed_body)
            except (ValueError, RuntimeError, UnicodeDecodeError) as exc:
                raise self._malformed(str(exc)) from None
        if not isinstance(self._root, dict | simdjson.Object):
            raise bad_request("the request body must be a JSON object ({...})")

    def _malformed(self, reason: str) -> HTTPException:
        if b"NaN" in self.body or b"Infinity" in self.body:
            return bad_request(
                "the body contains NaN or Infinity, which are neither valid JSON nor valid expression "
                "values; send finite numbers (use 0 for genes that were not detected)"
            )
        if "NUMBER_ERROR" in reason or "BIGINT_ERROR" in reason:
            return bad_request(
                f"a number in the body is malformed or out of range ({reason}); expression values must be "
                "finite numbers of ordinary size"
            )
        return bad_request(f"the body is not valid JSON ({reason}); send a UTF-8 JSON object", 400)

    def _node(self, path: JsonPath) -> Any:
        node = self._root
        for key in path:
            if not isinstance(node, dict | simdjson.Object):
                raise bad_request(f"'{'.'.join(path[:-1])}' must be a JSON object")
            node = node.get(key)
        return node

    def keys(self, path: JsonPath = ()) -> list[str]:
        """The keys of the object at ``path`` (422 if it is not an object)."""
        node = self._node(path)
        if not isinstance(node, dict | simdjson.Object):
            raise bad_request(f"'{'.'.join(path)}' must be a JSON object")
        return list(node.keys())

    def has(self, path: JsonPath) -> bool:
        """True if ``path`` is present and not null (without converting the value)."""
        return self._node(path) is not None

    def value(self, path: JsonPath, default: Any = None) -> Any:
        """The value at ``path`` as plain Python (``default`` when absent or null)."""
        node = self._node(path)
        if node is None:
            return default
        if isinstance(node, simdjson.Object):
            return node.as_dict()
        if isinstance(node, simdjson.Array):
            return node.as_list()
        return node

    def vector(self, path: JsonPath) -> np.ndarray:
        """The flat numeric array at ``path`` as float64 (422 if it is not one)."""
        name = ".".join(path)
        node = self._node(path)
        if self.strict:
            if not isinstance(node, list):
                raise bad_request(f"'{name}' must be a list of numbers")
            _check_numbers(node, name)
            return np.asarray(node, dtype=np.float64).reshape(-1)
        if not isinstance(node, simdjson.Array):
            raise bad_request(f"'{name}' must be a list of numbers")
        self._big[path] = 1
        try:
            return np.frombuffer(node.as_buffer(of_type="d"), dtype=np.float64)
        except TypeError:
            _check_numbers(node.as_list(), name)
            raise bad_request(f"'{name}' must be a list of numbers") from None

    def matrix(self, path: JsonPath, n_columns: int | None, max_rows: int) -> np.ndarray:
        """The list of equally long numeric rows at ``path`` as a float64 matrix.

        Args:
            path: where the rows are.
            n_columns: required row length (``None``: whatever the first row has).
            max_rows: more rows than this is answered with 413 before any value is read.
        """
        name = ".".join(path)
        node = self._node(path)
        if path in self._extracted:
            return self._extracted_matrix(path, node, n_columns, max_rows)
        if not isinstance(node, list | simdjson.Array):
            raise bad_request(f"'{name}' must be a list of rows (one list of numbers per cell)")
        n_rows = len(node)
        if n_rows > max_rows:
            raise too_many_cells(n_rows, max_rows)
        if n_rows == 0:
            raise bad_request(f"'{name}' is empty; send at least one cell")
        row_type = list if self.strict else simdjson.Array
        lengths = []
        for index, row in enumerate(node):
            if not isinstance(row, row_type):
                raise bad_request(f"'{name}[{index}]' must be a list of numbers (one row per cell)")
            lengths.append(len(row))
        width = lengths[0] if n_columns is None else n_columns
        for index, length in enumerate(lengths):
            if length != width:
                raise bad_request(
                    f"'{name}[{index}]' has {length} values but {width} were expected (one per gene, in the "
                    "order of the gene names); every row must have the same length"
                )
        if self.strict:
            for index, row in enumerate(node):
                _check_numbers(row, f"{name}[{index}]")
            return np.asarray(node, dtype=np.float64).reshape(n_rows, width)
        self._big[path] = 1 + n_rows
        try:
            flat = np.frombuffer(node.as_buffer(of_type="d"), dtype=np.float64)
        except TypeError:
            for index, row in enumerate(node):
                _check_numbers(row.as_list(), f"{name}[{index}]")
            raise bad_request(f"'{name}' must hold only numbers") from None
        if flat.size != n_rows * width:
            raise _StructureNotVerified
        return flat.reshape(n_rows, width)

    def _extracted_matrix(self, path: JsonPath, node: Any, n_columns: int | None, max_rows: int) -> np.ndarray:
        if not (isinstance(node, simdjson.Array) and len(node) == 0):
            raise _StructureNotVerified  # the parsed document does not see our rows at ``path``
        values, lengths = self._extracted[path]
        name = ".".join(path)
        self._big[path] = 1
        if lengths.size > max_rows:
            raise too_many_cells(lengths.size, max_rows)
        if lengths.size == 0:
            raise bad_request(f"'{name}' is empty; send at least one cell")
        width = int(lengths[0]) if n_columns is None else n_columns
        wrong = np.flatnonzero(lengths != width)
        if wrong.size:
            index = int(wrong[0])
            raise bad_request(
                f"'{name}[{index}]' has {int(lengths[index])} values but {width} were expected (one per gene, in "
                "the order of the gene names); every row must have the same length"
            )
        return values.reshape(lengths.size, width)

    def structure_verified(self) -> bool:
        """True if every ``[`` of the parsed body belongs to an array that decoding accounted for."""
        if self.strict:
            return True
        return self._parsed_body.count(b"[") == self._brackets(self._root, ())

    def _brackets(self, node: Any, path: JsonPath) -> int:
        if path in self._big:
            return self._big[path]
        if isinstance(node, simdjson.Object):
            return sum(key.count("[") + self._brackets(node[key], (*path, key)) for key in node)
        if isinstance(node, simdjson.Array):
            return _python_brackets(node.as_list())
        return node.count("[") if isinstance(node, str) else 0


def _python_brackets(value: Any) -> int:
    if isinstance(value, list):
        try:
            return 1 + "".join(value).count("[")  # the usual list of names, in one pass
        except TypeError:
            return 1 + sum(_python_brackets(item) for item in value)
    if isinstance(value, dict):
        return sum(key.count("[") + _python_brackets(item) for key, item in value.items())
    return value.count("[") if isinstance(value, str) else 0


def _check_numbers(values: list[Any], name: str) -> None:
    for position, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int | float):
            kind = "a list" if isinstance(value, list) else repr(value)
            raise bad_request(f"'{name}[{position}]' is {kind}; expression values must be plain numbers")


def read_json(body: bytes, decode: Callable[[JsonBody], T], rows_at: tuple[JsonPath, int] | None = None) -> T:
    """Run ``decode`` on the fast reader, falling back to the strict one when the structure is unproven.

    ``rows_at=(path, max_rows)`` names the list of rows to read with the compiled reader.
    """
    document = JsonBody(body, rows_at=rows_at)
    try:
        result = decode(document)
        if document.structure_verified():
            return result
    except _StructureNotVerified:
        pass
    return decode(JsonBody(body, strict=True))


# --------------------------------------------------------------------------------------------------
# /v1/predict bodies
# --------------------------------------------------------------------------------------------------

PREDICT_FIELDS = frozenset(PredictRequest.model_fields)


def decode_predict_json(body: bytes, max_cells: int) -> PredictionInput:
    """Decode a ``/v1/predict`` JSON body (see :class:`PredictRequest`), raising 4xx with a ``detail``."""
    return read_json(body, lambda document: _decode_predict(document, max_cells), rows_at=(("cells",), max_cells))


def _decode_predict(document: JsonBody, max_cells: int) -> PredictionInput:
    unknown = sorted(set(document.keys()) - PREDICT_FIELDS)
    if unknown:
        raise bad_request(f"unknown field(s) {unknown}; allowed: {sorted(PREDICT_FIELDS)}")
    genes = document.value(("genes",))
    if genes is None:
        raise bad_request("'genes' is required: the gene name of every column")
    genes = check_names(genes, "genes")
    options = check_options(
        document.value(("input",), "counts"),
        document.value(("top_k",)),
        document.value(("return_probabilities",), False),
        document.value(("threshold",)),
    )
    has_cells, has_csr = document.has(("cells",)), document.has(("csr",))
    if has_cells == has_csr:
        raise bad_request("send exactly one of 'cells' (dense rows) or 'csr' (sparse matrix)")
    if has_cells:
        matrix: np.ndarray | sp.csr_matrix = np.asarray(document.matrix(("cells",), len(genes), max_cells), dtype=np.float32)
    else:
        unknown = sorted(set(document.keys(("csr",))) - {"indptr", "indices", "data"})
        if unknown:
            raise bad_request(f"unknown field(s) {unknown} in 'csr'; allowed: ['data', 'indices', 'indptr']")
        indptr = document.vector(("csr", "indptr"))
        if indptr.size - 1 > max_cells:
            raise too_many_cells(indptr.size - 1, max_cells)
        if indptr.size <= 1:
            raise bad_request("'csr' holds no cells; send at least one cell")
        matrix = check_csr(
            indptr, document.vector(("csr", "indices")), document.vector(("csr", "data")), len(genes), "csr"
        )
    cell_ids = document.value(("cell_ids",))
    if cell_ids is not None:
        cell_ids = check_names(cell_ids, "cell_ids", expected=matrix.shape[0])
    return PredictionInput(matrix, genes, cell_ids, *options)


def decode_predict_npz(body: bytes, max_cells: int, max_expanded_bytes: int, options: dict[str, Any]) -> PredictionInput:
    """Decode a ``numpy.savez`` body: ``genes`` plus ``X`` (dense) or ``data``/``indices``/``indptr`` (CSR).

    ``cell_ids`` is optional. Nothing is unpickled; the archive's declared sizes are checked against
    ``max_expanded_bytes`` before anything is decompressed. ``options`` are the query-string options.
    """
    arrays = read_npz(body, max_expanded_bytes)
    allowed = {"genes", "X", "data", "indices", "indptr", "cell_ids"}
    unknown = sorted(set(arrays) - allowed)
    if unknown:
        raise bad_request(f"unknown array(s) {unknown} in the npz; allowed: {sorted(allowed)}")
    if "genes" not in arrays:
        raise bad_request("the npz must contain 'genes': the gene name of every column")
    genes = _string_array(arrays["genes"], "genes")
    csr_parts = {"data", "indices", "indptr"} & set(arrays)
    if ("X" in arrays) == bool(csr_parts):
        raise bad_request("the npz must contain either 'X' (dense cells x genes) or 'data', 'indices', 'indptr' (CSR)")
    if "X" in arrays:
        dense = arrays["X"]
        if dense.ndim != 2:
            raise bad_request(f"'X' must be 2-D (cells x genes); got shape {dense.shape}")
        if dense.shape[0] > max_cells:
            raise too_many_cells(dense.shape[0], max_cells)
        if dense.shape[0] == 0:
            raise bad_request("'X' has no cells; send at least one cell")
        if dense.shape[1] != len(genes):
            raise bad_request(f"'X' has {dense.shape[1]} columns but {len(genes)} genes were named; send one column per gene")
        _check_numeric(dense, "X")
        matrix: np.ndarray | sp.csr_matrix = np.ascontiguousarray(dense, dtype=np.float32)
    else:
        if csr_parts != {"data", "indices", "indptr"}:
            raise bad_request("a CSR npz needs all of 'data', 'indices' and 'indptr'")
        parts = {name: arrays[name].reshape(-1) for name in ("data", "indices", "indptr")}
        for name, part in parts.items():
            _check_numeric(part, name)
        if parts["indptr"].size - 1 > max_cells:
            raise too_many_cells(parts["indptr"].size - 1, max_cells)
        if parts["indptr"].size <= 1:
            raise bad_request("'indptr' holds no cells; send at least one cell")
        matrix = check_csr(parts["indptr"], parts["indices"], parts["data"], len(genes), "npz")
    cell_ids = None
    if "cell_ids" in arrays:
        cell_ids = _string_array(arrays["cell_ids"], "cell_ids")
        if len(cell_ids) != matrix.shape[0]:
            raise bad_request(f"'cell_ids' has {len(cell_ids)} entries but there are {matrix.shape[0]} cells")
    checked = check_options(
        options.get("input", "counts"),
        options.get("top_k"),
        options.get("return_probabilities", False),
        options.get("threshold"),
    )
    return PredictionInput(matrix, genes, cell_ids, *checked)


def read_npz(body: bytes, max_expanded_bytes: int) -> dict[str, np.ndarray]:
    """The arrays of an uncompressed or compressed ``.npz`` body; 400 if it is not a safe, readable one."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(body))
        members = archive.infolist()
        if sum(member.file_size for member in members) > max_expanded_bytes:
            raise bad_request(
                f"the npz expands to more than {max_expanded_bytes} bytes; send fewer cells per request", 413
            )
        arrays = {}
        for member in members:
            if not member.filename.endswith(".npy"):
                raise bad_request(f"the npz contains {member.filename!r}, which is not a .npy array", 400)
            with archive.open(member) as handle:
                _check_npy_header(handle, member.file_size, member.filename)
            with archive.open(member) as handle:
                arrays[member.filename[: -len(".npy")]] = npy_format.read_array(handle, allow_pickle=False)
        return arrays
    except HTTPException:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, MemoryError, KeyError) as exc:
        raise bad_request(
            f"the body is not a readable npz ({exc}); write it with numpy.savez (no object arrays)", 400
        ) from None


def _check_npy_header(handle: Any, file_size: int, name: str) -> None:
    version = npy_format.read_magic(handle)
    reader = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
    shape, _, dtype = reader(handle)
    if dtype.hasobject:
        raise bad_request(f"{name} holds Python objects, which are never loaded; send numbers or strings", 400)
    if math.prod(shape) * dtype.itemsize > file_size:
        raise bad_request(f"{name} declares more data than it contains", 400)


def _check_numeric(array: np.ndarray, name: str) -> None:
    if array.dtype.kind not in "iuf":
        raise bad_request(f"'{name}' must hold numbers; got dtype {array.dtype}")


def _string_array(array: np.ndarray, name: str) -> list[str]:
    if array.ndim != 1 or array.dtype.kind not in "US":
        raise bad_request(f"'{name}' must be a 1-D array of strings (numpy dtype 'U' or 'S')")
    if array.dtype.kind == "S":
        try:
            return [value.decode("utf-8") for value in array.tolist()]
        except UnicodeDecodeError:
            raise bad_request(f"'{name}' is not valid UTF-8") from None
    return array.tolist()
