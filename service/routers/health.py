"""Liveness and readiness probes (never behind the API key)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.deps import StoreDep

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live", summary="The process is up")
def live() -> dict[str, str]:
    """Always 200 while the server runs."""
    return {"status": "alive"}


@router.get(
    "/ready",
    summary="A model is loaded and requests are served",
    responses={503: {"description": "No model loaded yet."}},
)
def ready(store: StoreDep) -> Any:
    """200 with the served model once one is loaded, 503 before."""
    served = store.current
    if served is None:
        return JSONResponse({"status": "not ready", "detail": "no model is loaded yet"}, status_code=503)
    return {"status": "ready", "model": served.summary}
