"""The HTTP routes, one router per file, and what they share: content types and documented errors."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request

from service.schemas import ErrorResponse

JSON_MEDIA_TYPE = "application/json"

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


def unsupported_media_type(received: str, accepted: list[str]) -> HTTPException:
    """415 naming what was received and what is accepted."""
    return HTTPException(
        status_code=415,
        detail=f"unsupported content type {received or '(none)'!r}; send one of: {', '.join(accepted)}",
    )
