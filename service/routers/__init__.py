"""The HTTP routes, one router per file, and what they share: content types and documented errors."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import Request
from pydantic import BaseModel

from service.schemas import ErrorResponse

JSON_MEDIA_TYPE = "application/json"
NPZ_MEDIA_TYPE = "application/x-npz"
"""Content type of the binary predict body: ``numpy.savez`` output."""

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "Malformed body (not JSON / npz / h5ad).",
        401: "Missing or wrong API key.",
        413: "Body or number of cells over the limit.",
        415: "Unsupported content type.",
        422: "The data cannot be used as sent; `detail` says what to fix.",
        503: "No model loaded, or overloaded (see `Retry-After`).",
        504: "Not answered within the request timeout.",
    }.items()
}
"""Error answers shared by the prediction routes, for the OpenAPI document."""


def media_type(request: Request) -> str:
    """The request's content type without parameters, lower case ("" when absent)."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def openapi_request_body(model: type[BaseModel], binary_types: Iterable[str] = ()) -> dict[str, Any]:
    """An OpenAPI ``requestBody`` documenting ``model`` as JSON (and raw binary ``binary_types``).

    The routes read their bodies themselves (see :mod:`service.decoding`), so FastAPI does not see the model;
    the schema's ``$defs`` are inlined to keep the document self-contained.
    """
    schema = _inline_defs(model.model_json_schema())
    content: dict[str, Any] = {"application/json": {"schema": schema}}
    for binary_type in binary_types:
        content[binary_type] = {"schema": {"type": "string", "format": "binary"}}
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
