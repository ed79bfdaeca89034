"""Start-up and shutdown of the application: loading the model, warming the JSON reader, periodic reloads."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import anyio
from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException

from model.predict import Predictor
from service.decoding.predict import warm_up
from service.model_store import Loader, ModelStore
from service.observability import mark_process_dead
from service.routers import admin
from service.settings import Settings


def default_loader(settings: Settings) -> Loader:
    """Load a URI with :meth:`Predictor.load` using the settings' tracking URI, device and overlap."""

    def load(uri: str) -> Predictor:
        return Predictor.load(
            uri, tracking_uri=settings.tracking_uri, device=settings.device, min_overlap=settings.min_gene_overlap
        )

    return load


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the model (unless one was given), warm up, reload periodically; on shutdown stop the runner."""
    settings: Settings = app.state.settings
    store: ModelStore = app.state.store
    if store.current is None and store.uri is not None:
        await anyio.to_thread.run_sync(store.load)
    await anyio.to_thread.run_sync(warm_up)
    reloader = None
    if settings.reload_interval_s > 0:
        reloader = asyncio.create_task(_reload_periodically(app, settings.reload_interval_s))
    try:
        yield
    finally:
        if reloader is not None:
            reloader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reloader
        await anyio.to_thread.run_sync(app.state.runner.shutdown)
        mark_process_dead()


async def _reload_periodically(app: FastAPI, interval_s: float) -> None:
    """Re-resolve the model URI every ``interval_s`` seconds; failures are logged and counted only."""
    while True:
        await asyncio.sleep(interval_s)
        with contextlib.suppress(StarletteHTTPException):
            await admin.reload_model(app.state.store, app.state.metrics)
