"""Fixtures shared by every test package.

- ``seed``: the one place that decides test seeds (0); it also seeds ``random``, numpy's global
  generator and torch. A test needing two different streams uses ``seed`` and ``seed + 1``.
- ``synthetic_adata``: 60 cells of raw counts over :data:`tests.factories.GENES` from two labs
  (``obs['cell_type']``, ``obs['batch']``), built from ``seed`` (see :func:`tests.factories.synthetic_adata`).

MLflow fixtures shared by the registry and tracking tests:

- ``mlflow_sqlite_store``: one migrated SQLite tracking/registry store for the whole session (a fresh
  SQLite DB takes seconds to migrate); tests keep apart by using unique model names.
- ``mlflow_server``: a real ``mlflow server`` subprocess for the session, backed by a throw-away
  PostgreSQL database on 127.0.0.1:5432 (dropped at the end) and proxying artifacts to a tmp dir.
  Without PostgreSQL its tests are skipped, except under ``CI=true`` where they fail.
- ``mlflow_store``: parametrized over both (the server case is marked ``integration``).
- ``unreachable_tracking_uri``: an ``http://`` URI on a port nobody listens on.
- ``broken_tracking_server``: a local HTTP server answering ``/health`` and every API call with the
  statuses a test asks for (a wrong service, or a tracking server failing mid-way).
- ``bundle_cache``: a per-test ``CELLTYPE_CACHE_DIR``.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anndata
import numpy as np
import pytest
import torch

from benchmarks.reliability.harness import free_port
from benchmarks.reliability.stores import (
    POSTGRES_HOST,
    POSTGRES_PORT,
    POSTGRES_USERS,
    SOURCE_REGEX,
    postgres_connection,
)
from tests import factories

SERVER_START_TIMEOUT_S = 180


@dataclass(frozen=True)
class MlflowStore:
    """A tracking/registry store for tests.

    Attributes:
        kind: ``"sqlite"`` or ``"server"``.
        uri: the tracking URI to pass to celltype / MLflow.
        artifacts_dir: local directory where this store's artifacts end up (for tampering tests).
    """

    kind: str
    uri: str
    artifacts_dir: Path


@pytest.fixture
def seed() -> int:
    """The seed of this test (0), with ``random``, numpy's global generator and torch seeded from it."""
    value = 0
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)
    return value


@pytest.fixture
def synthetic_adata(seed: int) -> anndata.AnnData:
    """60 cells of raw counts over the shared genes, two labs and four cell types (the test may modify it)."""
    return factories.synthetic_adata(seed=seed)


def subprocess_env(**overrides: str) -> dict[str, str]:
    """This environment with the venv's ``bin`` first on ``PATH`` (``uvicorn`` lives there)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(overrides)
    return env


def stop_process_group(process: subprocess.Popen) -> None:
    """Terminate the process group started for ``process`` (SIGTERM, then SIGKILL after 20 s)."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def wait_until_healthy(url: str, process: subprocess.Popen, log: Path, timeout_s: float) -> None:
    """Poll ``url`` until it answers 200; fail with the log's tail if the process dies or time runs out."""
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{process.args[:4]} exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.exceptions.RequestException:
            pass
        time.sleep(0.5)
    stop_process_group(process)
    pytest.fail(f"{url} not healthy after {timeout_s:.0f} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="session")
def mlflow_sqlite_store(tmp_path_factory: pytest.TempPathFactory) -> MlflowStore:
    """A migrated SQLite store shared by the session; its experiments keep artifacts in ``mlartifacts/``."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("mlflow-sqlite")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments()
    return MlflowStore(kind="sqlite", uri=uri, artifacts_dir=root / "mlartifacts")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowStore]:
    """A real ``mlflow server`` on PostgreSQL with proxied artifacts, torn down with its database."""
    connection = postgres_connection()
    if connection is None:
        reason = (
            f"PostgreSQL is not reachable on {POSTGRES_HOST}:{POSTGRES_PORT} as {' or '.join(POSTGRES_USERS)} "
            "(start it with scripts/ensure_postgres.sh)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    user = connection.get_dsn_parameters()["user"]
    database = f"celltype_test_{secrets.token_hex(6)}"
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{database}"')
    root = tmp_path_factory.mktemp("mlflow-server")
    artifacts, log = root / "artifacts", root / "server.log"
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"postgresql+psycopg2://{user}@{POSTGRES_HOST}:{POSTGRES_PORT}/{database}",
        "--artifacts-destination", str(artifacts),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    with open(log, "wb") as stream:
        process = subprocess.Popen(
            command,
            cwd=root,
            env=subprocess_env(MLFLOW_CREATE_MODEL_VERSION_SOURCE_VALIDATION_REGEX=SOURCE_REGEX),
            stdout=stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(f"{uri}/health", process, log, SERVER_START_TIMEOUT_S)
        yield MlflowStore(kind="server", uri=uri, artifacts_dir=artifacts)
    finally:
        stop_process_group(process)
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        connection.close()


@pytest.fixture(params=["sqlite", pytest.param("server", marks=pytest.mark.integration)])
def mlflow_store(request: pytest.FixtureRequest) -> MlflowStore:
    """The shared SQLite store, then the PostgreSQL-backed server: registry tests run against both."""
    return request.getfixturevalue("mlflow_sqlite_store" if request.param == "sqlite" else "mlflow_server")


@pytest.fixture
def unreachable_tracking_uri() -> str:
    """``http://127.0.0.1:PORT`` where nothing listens (connections are refused)."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def broken_tracking_server() -> Iterator[Callable[[int, int], str]]:
    """``start(health_status, api_status) -> URI`` of a local server answering with those statuses."""
    servers: list[ThreadingHTTPServer] = []

    def start(health_status: int, api_status: int) -> str:
        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                status = health_status if self.path.rstrip("/") == "/health" else api_status
                body = b'{"error_code": "INTERNAL_ERROR", "message": "broken on purpose"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer

            def log_message(self, *args: object) -> None:
                return

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def bundle_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh bundle cache for this test (``CELLTYPE_CACHE_DIR``)."""
    cache = tmp_path / "bundle-cache"
    monkeypatch.setenv("CELLTYPE_CACHE_DIR", str(cache))
    return cache
