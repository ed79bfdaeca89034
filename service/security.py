"""Protecting the service: the optional API key and the request body size limit."""

from __future__ import annotations

import hmac

import orjson
from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.observability import Metrics

API_KEY_HEADER = "X-API-Key"
"""Alternative to ``Authorization: Bearer KEY``."""


def verify_api_key(presented: str | None, expected: str) -> None:
    """Raise 401 unless ``presented`` equals ``expected`` (compared in constant time).

    ``presented`` is a header value as the server decoded it (latin-1, per HTTP), so its bytes are
    compared with the UTF-8 bytes of ``expected``: non-ASCII keys work when sent as UTF-8.
    """
    if not presented:
        raise HTTPException(
            status_code=401,
            detail=f"this endpoint needs an API key: send 'Authorization: Bearer KEY' or '{API_KEY_HEADER}: KEY'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(presented.encode("latin-1", errors="replace"), expected.encode("utf-8")):
        raise HTTPException(status_code=401, detail="the API key is not valid", headers={"WWW-Authenticate": "Bearer"})


class BodyLimitMiddleware:
    """ASGI middleware answering 413 for bodies over ``max_bytes``, before reading more than that.

    A ``Content-Length`` over the limit is refused before any body byte is read; a body sent without
    one (chunked) is cut off as soon as the bytes received pass the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: Metrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send)
            return
        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if response_started:
                raise
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        self.metrics.errors.labels("too_large").inc()
        body = orjson.dumps(
            {
                "detail": f"the request body is larger than {self.max_bytes} bytes; send fewer cells per "
                "request, use the sparse 'csr' form or the binary npz form"
            }
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    """Raised from ``receive`` when the body passes the limit."""


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
