"""``POST /v1/admin/reload``: re-resolve the model URI and swap in the version it points to now."""

from __future__ import annotations

import logging
from typing import Any

import anyio
from fastapi import APIRouter, HTTPException

from model.errors import CellTypeError
from model.registry import RegistryUnavailableError
from service.deps import MetricsDep, StoreDep
from service.model_store import ModelLoadError, ModelStore, NoModelConfiguredError, ReloadInProgressError
from service.observability import Metrics
from service.schemas import ErrorResponse, ReloadResponse

router = APIRouter(prefix="/v1/admin", tags=["admin"])
logger = logging.getLogger(__name__)


async def reload_model(store: ModelStore, metrics: Metrics) -> dict[str, Any]:
    """Reload ``store`` off the event loop; the outcome is counted in ``metrics`` and logged.

    Raises:
        HTTPException: 409 when the candidate is refused (checksum, malformed, not found) or another
            reload runs; 502 when the registry could not be reached. The current model keeps serving.
    """
    try:
        outcome = await anyio.to_thread.run_sync(store.reload)
    except (ReloadInProgressError, NoModelConfiguredError) as exc:
        metrics.reloads.labels("refused").inc()
        raise HTTPException(status_code=409, detail=str(exc)) from None
    except (ModelLoadError, RegistryUnavailableError) as exc:
        metrics.reloads.labels("failed").inc()
        logger.warning("model reload failed", extra={"reason": str(exc)})
        raise HTTPException(status_code=502, detail=f"{exc}; the current model keeps serving") from None
    except CellTypeError as exc:
        metrics.reloads.labels("refused").inc()
        logger.warning("model reload refused", extra={"reason": str(exc)})
        raise HTTPException(status_code=409, detail=f"{exc}; the current model keeps serving") from None
    metrics.reloads.labels(outcome["status"]).inc()
    logger.info("model reload", extra={"outcome": outcome})
    return outcome


@router.post(
    "/reload",
    response_model=ReloadResponse,
    summary="Re-resolve the model URI (e.g. the champion alias) and swap models atomically",
    responses={
        409: {"model": ErrorResponse, "description": "Candidate refused (checksum, malformed, missing) or busy."},
        502: {"model": ErrorResponse, "description": "The registry could not be reached."},
    },
)
async def reload(store: StoreDep, metrics: MetricsDep) -> dict[str, Any]:
    """Load what the configured URI points to now. Requests in flight finish on the old model; a
    candidate that fails to download, fails its checksum or does not load is refused and the old
    model keeps serving."""
    return await reload_model(store, metrics)
