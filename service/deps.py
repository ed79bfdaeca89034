"""Typed FastAPI dependencies: settings, the model store, the served model, the runner, metrics, auth."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.inference import InferenceRunner
from service.model_store import ModelStore, ServedModel
from service.observability import Metrics
from service.security import API_KEY_HEADER, verify_api_key
from service.settings import Settings


def get_settings(request: Request) -> Settings:
    """The application's settings."""
    return request.app.state.settings


def get_store(request: Request) -> ModelStore:
    """The model store."""
    return request.app.state.store


def get_runner(request: Request) -> InferenceRunner:
    """The bounded inference runner."""
    return request.app.state.runner


def get_metrics(request: Request) -> Metrics:
    """The application's metrics."""
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ModelStore, Depends(get_store)]
RunnerDep = Annotated[InferenceRunner, Depends(get_runner)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


def get_served_model(store: StoreDep) -> ServedModel:
    """The model serving now (the request keeps it even if a reload swaps in another); 503 if none."""
    served = store.current
    if served is None:
        raise HTTPException(status_code=503, detail="no model is loaded yet; retry when /health/ready answers 200")
    return served


ServedModelDep = Annotated[ServedModel, Depends(get_served_model)]

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer KEY` (when the service has an API key).")
_api_key_header = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, description=f"`{API_KEY_HEADER}: KEY` (when the service has an API key)."
)


def require_api_key(
    settings: SettingsDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header_key: Annotated[str | None, Depends(_api_key_header)],
) -> None:
    """401 unless the service has no API key or the request presents it (Bearer or ``X-API-Key``)."""
    if settings.api_key is None:
        return
    presented = bearer.credentials if bearer is not None else header_key
    verify_api_key(presented, settings.api_key.get_secret_value())
