"""The FastAPI application: ``create_app(settings)`` wires settings, model store, runner, metrics and routes,
and maps errors to answers.

Errors become JSON answers with a ``detail`` that says what to fix: the model core's input errors are
422; the request errors of :mod:`service.errors` get their status (422 unusable content, 400 malformed
bodies, 413 oversized ones, 415 unsupported content types); overload is 503 (with ``Retry-After``),
timeouts 504. Anything unforeseen is a JSON 500 naming the request id, with the
traceback in the server log only.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from model.errors import GeneMismatchError, InputError, InputKindError
from model.predict import Predictor
from service.blas_threads import limit_blas_threads
from service.deps import require_api_key
from service.errors import STATUS, RequestInputError
from service.inference import InferenceRunner, InferenceTimeoutError, OverloadedError
from service.lifespan import default_loader, lifespan
from service.model_store import Loader, ModelStore
from service.observability import Metrics, ObservabilityMiddleware
from service.routers import admin, health, invocations, predict, web
from service.routers import metrics as metrics_routes
from service.routers import model as model_routes
from service.schemas import ErrorResponse
from service.security import BodyLimitMiddleware
from service.settings import Settings

logger = logging.getLogger(__name__)

ERROR_KINDS = {
    400: "malformed_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "reload_refused",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    502: "reload_failed",
    503: "unavailable",
    504: "timeout",
}
"""``celltype_errors_total`` kind of each HTTP error status (model input errors have finer kinds)."""


def create_app(
    settings: Settings | None = None, *, predictor: Predictor | None = None, loader: Loader | None = None
) -> FastAPI:
    """Build the service.

    Args:
        settings: configuration (default: read from ``CELLTYPE_*`` environment variables).
        predictor: a model already loaded (``celltype serve`` loads it before starting the server);
            without one, the model at ``settings.model_uri`` is loaded at start-up.
        loader: how URIs are loaded (default: :func:`default_loader`).
    """
    settings = settings or Settings()
    limit_blas_threads(settings.torch_threads)
    registry = Metrics()
    store = ModelStore(settings.model_uri, loader or default_loader(settings), on_change=registry.set_model)
    if predictor is not None:
        store.install(predictor)
    runner = InferenceRunner(settings.max_concurrency, settings.max_queue, settings.request_timeout_s, registry)

    app = FastAPI(
        title="celltype",
        summary="Cell types for single-cell expression profiles; each cell's answer is independent of the rest.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # offline /docs and /redoc come from service.routers.web
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.runner = runner
    app.state.metrics = registry

    _add_exception_handlers(app, registry)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, metrics=registry)
    app.add_middleware(ObservabilityMiddleware, metrics=registry)

    app.include_router(health.router)
    app.include_router(web.page_router)
    web.mount_assets(app)
    protected = [Depends(require_api_key)]
    unauthorized = {401: {"model": ErrorResponse, "description": "missing or wrong API key"}}
    api_routers = (model_routes.router, predict.router, invocations.router, admin.router, metrics_routes.router)
    for router in (*api_routers, web.router):
        app.include_router(router, dependencies=protected, responses=unauthorized)
    return app


def _error_response(request: Request, status_code: int, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    content: dict[str, Any] = {"detail": detail}
    if request.url.path == "/invocations":
        status_code = 400 if status_code == 422 else status_code
        content.update(invocations.mlflow_error_fields(status_code, detail))
    request_id = getattr(request.state, "request_id", None)
    if request_id:
        content["request_id"] = request_id
    return JSONResponse(content, status_code=status_code, headers=headers)


def _add_exception_handlers(app: FastAPI, registry: Metrics) -> None:
    def count(kind: str) -> None:
        registry.errors.labels(kind).inc()

    @app.exception_handler(GeneMismatchError)
    async def gene_mismatch(request: Request, exc: GeneMismatchError) -> JSONResponse:
        count("gene_mismatch")
        return _error_response(request, 422, str(exc))

    @app.exception_handler(InputKindError)
    async def input_kind(request: Request, exc: InputKindError) -> JSONResponse:
        count("input_values")
        return _error_response(request, 422, str(exc))

    @app.exception_handler(RequestInputError)
    async def request_error(request: Request, exc: RequestInputError) -> JSONResponse:
        status = STATUS[type(exc)]
        count(ERROR_KINDS[status])
        return _error_response(request, status, exc.detail)

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError) -> JSONResponse:
        count("invalid_input")
        return _error_response(request, 422, str(exc))

    @app.exception_handler(OverloadedError)
    async def overloaded(request: Request, exc: OverloadedError) -> JSONResponse:
        count("overloaded")
        return _error_response(
            request,
            503,
            "the service is at capacity (every worker busy and the queue full); retry after a moment",
            headers={"Retry-After": str(exc.retry_after_s)},
        )

    @app.exception_handler(InferenceTimeoutError)
    async def timed_out(request: Request, exc: InferenceTimeoutError) -> JSONResponse:
        count("timeout")
        return _error_response(
            request,
            504,
            f"the request was not answered within {exc.timeout_s:g} s; send fewer cells per request or retry later",
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        count(ERROR_KINDS.get(exc.status_code, f"http_{exc.status_code}"))
        return _error_response(request, exc.status_code, exc.detail, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        count("invalid_request")
        return _error_response(request, 422, _plain_errors(exc))

    app.add_exception_handler(Exception, internal_error_handler)


def _plain_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": list(error.get("loc", ())), "msg": error.get("msg", ""), "type": error.get("type", "")}
        for error in exc.errors()
    ]


async def internal_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """A JSON 500 naming the request id; the traceback goes to the log, never to the client."""
    logger.error("unhandled error", exc_info=(type(exc), exc, exc.__traceback__))
    request.app.state.metrics.errors.labels("internal").inc()
    request_id = getattr(request.state, "request_id", None)
    return JSONResponse(
        {
            "detail": f"internal error while handling request {request_id}; it has been logged. "
            "If it persists, report the request id",
            "request_id": request_id,
        },
        status_code=500,
        headers={"X-Request-ID": request_id} if request_id else None,
    )
