"""JSON logs with request ids, and Prometheus metrics.

Every request gets an id (the client's ``X-Request-ID`` if it is sane, else a fresh one), echoed in
the response header and attached to every log line written while the request runs, worker threads
included. One access-log line per request records method, route, status and duration, never a
payload. Metrics live in a registry per application; with several worker processes they are
aggregated through ``PROMETHEUS_MULTIPROC_DIR`` (set up by ``celltype serve``).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import uuid
from contextvars import ContextVar
from typing import Any

import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.model_store import SUMMARY_KEYS, ServedModel

REQUEST_ID_HEADER = "X-Request-ID"
"""Header carrying the request id, in and out."""

request_id_var: ContextVar[str | None] = ContextVar("celltype_request_id", default=None)
"""The id of the request being handled in this context (``None`` outside requests)."""

_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_STANDARD_RECORD_KEYS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "request_id"}
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Request latency histogram buckets, in seconds."""


def multiprocess_mode() -> bool:
    """True when metrics are shared between worker processes (``PROMETHEUS_MULTIPROC_DIR`` is set)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


# --------------------------------------------------------------------------------------------------
# Logging
# --------------------------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD_RECORD_KEYS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


JsonFormatter.converter = time.gmtime


def configure_logging(level: str = "info") -> None:
    """Send every log record (uvicorn's included) to stderr as JSON lines at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers[:] = []
        uvicorn_logger.propagate = True


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


class Metrics:
    """The service's Prometheus metrics.

    Attributes:
        requests: requests by route template, method and status code.
        latency: request duration by route template.
        cells: cells predicted, by route template.
        errors: error answers by kind (``invalid_input``, ``gene_mismatch``, ``too_large``, ...).
        model_info: 1 for the served model's name/version/alias/run id/digest, 0 for earlier ones.
        reloads: model reload attempts by result.
        in_flight: requests admitted to inference (running or queued).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter(
            "celltype_http_requests", "HTTP requests answered", ["route", "method", "status"], registry=registry
        )
        self.latency = Histogram(
            "celltype_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.cells = Counter("celltype_cells_predicted", "Cells predicted", ["route"], registry=registry)
        self.errors = Counter("celltype_errors", "Error answers by kind", ["kind"], registry=registry)
        self.model_info = Gauge(
            "celltype_model_info",
            "The served model (1) and models served before (0)",
            list(SUMMARY_KEYS),
            registry=registry,
            multiprocess_mode="liveall",
        )
        self.reloads = Counter("celltype_model_reloads", "Model reload attempts", ["result"], registry=registry)
        self.in_flight = Gauge(
            "celltype_inference_in_flight",
            "Requests admitted to inference (running or waiting)",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._model_labels: dict[str, str] | None = None

    def set_model(self, served: ServedModel) -> None:
        """Mark ``served`` as the model serving now."""
        labels = {key: str(served.description.get(key) or "") for key in SUMMARY_KEYS}
        if self._model_labels is not None and self._model_labels != labels:
            self.model_info.labels(**self._model_labels).set(0)
        self.model_info.labels(**labels).set(1)
        self._model_labels = labels

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type (aggregated over processes in multiprocess mode)."""
        if multiprocess_mode():
            registry = CollectorRegistry()
            prometheus_multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def mark_process_dead() -> None:
    """Drop this process's live gauges from the shared metrics (multiprocess mode only)."""
    if multiprocess_mode():
        prometheus_multiprocess.mark_process_dead(os.getpid())


# --------------------------------------------------------------------------------------------------
# Middleware
# --------------------------------------------------------------------------------------------------


class ObservabilityMiddleware:
    """ASGI middleware: request ids, the access log and per-request metrics."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self.logger = logging.getLogger("celltype.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.lower().encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            self.logger.info(
                "request",
                extra={
                    "method": method,
                    "path": scope["path"],
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                },
            )
            request_id_var.reset(token)


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _SANE_REQUEST_ID.match(text) else None
    return None
