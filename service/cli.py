"""``celltype serve``: load a model once and serve it over HTTP with uvicorn.

The model is loaded (downloaded, checksum-verified, read from safetensors) before the server starts,
so a model that cannot be loaded is a one-line error and exit code 2, never a server that starts and
then fails. SIGTERM or Ctrl-C stop accepting connections and let requests in flight finish.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from typing import Any

from pydantic import ValidationError

from model.errors import InputError
from service.settings import ENV_PREFIX, Settings

GRACE_PERIOD_S = 5.0
"""Extra seconds, beyond the request timeout, that shutdown waits for requests in flight."""


def add_commands(subparsers: Any) -> None:
    """Add ``serve`` to the ``celltype`` command."""
    parser = subparsers.add_parser(
        "serve",
        help="serve a model over HTTP (REST, MLflow /invocations, Prometheus metrics)",
        description=(
            "Serve a model over HTTP: /v1/predict, /v1/predict/h5ad, /invocations, /v1/model, "
            "/health/live, /health/ready, /metrics, /v1/admin/reload; OpenAPI docs at /docs. Every option "
            f"can also be set with an environment variable {ENV_PREFIX}<OPTION> (e.g. {ENV_PREFIX}API_KEY, "
            f"{ENV_PREFIX}MAX_CELLS_PER_REQUEST, {ENV_PREFIX}RELOAD_INTERVAL_S)."
        ),
    )
    parser.add_argument(
        "--model",
        dest="model_uri",
        help=f"models:/NAME@champion, models:/NAME/VERSION or a bundle directory (env {ENV_PREFIX}MODEL_URI)",
    )
    parser.add_argument("--host", help="interface to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, help="TCP port (default 8000)")
    parser.add_argument("--workers", type=int, help="server processes, each with its own copy of the model (default 1)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI for models:/ URIs (default MLFLOW_TRACKING_URI)")
    parser.add_argument("--log-level", help="critical, error, warning, info (default) or debug")
    parser.set_defaults(handler=serve)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the options given on the command line."""
    overrides = {
        name: getattr(args, name)
        for name in ("model_uri", "host", "port", "workers", "tracking_uri", "log_level")
        if getattr(args, name, None) is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InputError(f"invalid settings ({problems})") from None
    if not settings.model_uri:
        raise InputError(f"no model to serve: pass --model models:/NAME@champion (or set {ENV_PREFIX}MODEL_URI)")
    return settings


def serve(args: argparse.Namespace) -> int:
    """Load the model, then run the server until SIGTERM/SIGINT; returns the exit code."""
    import torch
    import uvicorn

    from service.app import create_app
    from service.lifespan import default_loader
    from service.model_store import ModelStore
    from service.observability import configure_logging

    settings = settings_from_args(args)
    configure_logging(settings.log_level)
    torch.set_num_threads(settings.torch_threads)
    # Loaded here so that a bad model fails the command at once; "model installed" is logged once, when
    # the app installs it (in each worker process when there are several).
    predictor = ModelStore(settings.model_uri, default_loader(settings)).fetch()
    common = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "access_log": False,
        "lifespan": "on",
        "timeout_graceful_shutdown": settings.request_timeout_s + GRACE_PERIOD_S,
    }
    if settings.workers == 1:
        server = uvicorn.Server(uvicorn.Config(create_app(settings, predictor=predictor), **common))
        server.run()
        return 0 if server.started else 1
    del predictor
    metrics_dir = tempfile.mkdtemp(prefix="celltype-metrics-")
    os.environ.update(settings.environment())
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    os.environ["OMP_NUM_THREADS"] = str(settings.torch_threads)
    try:
        uvicorn.run("service.app:create_app", factory=True, workers=settings.workers, **common)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0
