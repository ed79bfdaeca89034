"""Reading a JSON request body fast and exactly: :class:`JsonBody` and :func:`read_json`.

Large bodies are never validated value by value through pydantic: a 1000 x 2000 JSON matrix would take
longer to validate than to predict. :class:`JsonBody` reads the list of rows of a request with the
compiled reader (:mod:`service.decoding.json_rows`) straight into float32, the rest of the document and
other numeric arrays with simdjson, and checks the document's structure exactly (see
:meth:`JsonBody.structure_verified`); the few documents it cannot vouch for are re-read strictly with
orjson, which also words the error messages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import orjson
import simdjson

from service.decoding.json_rows import JsonPath, extract_rows
from service.errors import MalformedBodyError, RequestInputError, too_many_cells

T = TypeVar("T")


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

    Raises :class:`MalformedBodyError` for malformed JSON, :class:`RequestInputError` for a document that is
    not an object.
    """

    def __init__(self, body: bytes, *, strict: bool = False, rows_at: tuple[JsonPath, int] | None = None) -> None:
        self.body = body
        self.strict = strict
        self._big: dict[JsonPath, int] = {}
        self._extracted: dict[JsonPath, tuple[np.ndarray, np.ndarray]] = {}
        if not body.strip():
            raise MalformedBodyError("the request body is empty; send a JSON object")
        self._parsed_body = body
        if strict:
            try:
                self._root: Any = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise self._malformed(str(exc)) from None
        else:
            extracted = extract_rows(body, *rows_at) if rows_at is not None else None
            if extracted is not None:
                start, end, values, lengths = extracted
                self._parsed_body = body[:start] + b"[]" + body[end:]
                self._extracted[rows_at[0]] = (values, lengths)
            try:
                self._root = simdjson.Parser().parse(self._parsed_body)
            except (ValueError, RuntimeError, UnicodeDecodeError) as exc:
                raise self._malformed(str(exc)) from None
        if not isinstance(self._root, dict | simdjson.Object):
            raise RequestInputError("the request body must be a JSON object ({...})")

    def _malformed(self, reason: str) -> RequestInputError:
        if b"NaN" in self.body or b"Infinity" in self.body:
            return RequestInputError(
                "the body contains NaN or Infinity, which are neither valid JSON nor valid expression "
                "values; send finite numbers (use 0 for genes that were not detected)"
            )
        if "NUMBER_ERROR" in reason or "BIGINT_ERROR" in reason:
            return RequestInputError(
                f"a number in the body is malformed or out of range ({reason}); expression values must be "
                "finite numbers of ordinary size"
            )
        return MalformedBodyError(f"the body is not valid JSON ({reason}); send a UTF-8 JSON object")

    def _node(self, path: JsonPath) -> Any:
        node = self._root
        for key in path:
            if not isinstance(node, dict | simdjson.Object):
                raise RequestInputError(f"'{'.'.join(path[:-1])}' must be a JSON object")
            node = node.get(key)
        return node

    def keys(self, path: JsonPath = ()) -> list[str]:
        """The keys of the object at ``path`` (:class:`RequestInputError` if it is not an object)."""
        node = self._node(path)
        if not isinstance(node, dict | simdjson.Object):
            raise RequestInputError(f"'{'.'.join(path)}' must be a JSON object")
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
        """The flat numeric array at ``path`` as float64 (:class:`RequestInputError` if it is not one)."""
        name = ".".join(path)
        node = self._node(path)
        if self.strict:
            if not isinstance(node, list):
                raise RequestInputError(f"'{name}' must be a list of numbers")
            _check_numbers(node, name)
            return np.asarray(node, dtype=np.float64).reshape(-1)
        if not isinstance(node, simdjson.Array):
            raise RequestInputError(f"'{name}' must be a list of numbers")
        self._big[path] = 1
        try:
            return np.frombuffer(node.as_buffer(of_type="d"), dtype=np.float64)
        except TypeError:
            _check_numbers(node.as_list(), name)
            raise RequestInputError(f"'{name}' must be a list of numbers") from None

    def matrix(self, path: JsonPath, n_columns: int | None, max_rows: int) -> np.ndarray:
        """The list of equally long numeric rows at ``path`` as a float64 matrix.

        Args:
            path: where the rows are.
            n_columns: required row length (``None``: whatever the first row has).
            max_rows: more rows than this raises :class:`BodyTooLargeError` before any value is read.
        """
        name = ".".join(path)
        node = self._node(path)
        if path in self._extracted:
            return self._extracted_matrix(path, node, n_columns, max_rows)
        if not isinstance(node, list | simdjson.Array):
            raise RequestInputError(f"'{name}' must be a list of rows (one list of numbers per cell)")
        n_rows = len(node)
        if n_rows > max_rows:
            raise too_many_cells(n_rows, max_rows)
        if n_rows == 0:
            raise RequestInputError(f"'{name}' is empty; send at least one cell")
        row_type = list if self.strict else simdjson.Array
        lengths = []
        for index, row in enumerate(node):
            if not isinstance(row, row_type):
                raise RequestInputError(f"'{name}[{index}]' must be a list of numbers (one row per cell)")
            lengths.append(len(row))
        width = lengths[0] if n_columns is None else n_columns
        for index, length in enumerate(lengths):
            if length != width:
                raise RequestInputError(
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
            raise RequestInputError(f"'{name}' must hold only numbers") from None
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
            raise RequestInputError(f"'{name}' is empty; send at least one cell")
        width = int(lengths[0]) if n_columns is None else n_columns
        wrong = np.flatnonzero(lengths != width)
        if wrong.size:
            index = int(wrong[0])
            raise RequestInputError(
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
            raise RequestInputError(f"'{name}[{position}]' is {kind}; expression values must be plain numbers")


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
