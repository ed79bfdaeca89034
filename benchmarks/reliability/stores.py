"""The registries the scenarios run against and break: throw-away PostgreSQL databases, a restartable
``mlflow server``, a loopback TCP proxy that can be cut, and publishing into a registry."""

from __future__ import annotations

import contextlib
import secrets
import select
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from benchmarks.reliability.harness import Managed, child_env, free_port, wait_http

SOURCE_REGEX = r"^(mlflow-artifacts:/|runs:/|models:/m-)"
"""``MLFLOW_CREATE_MODEL_VERSION_SOURCE_VALIDATION_REGEX`` of the servers started here (CVE-2025-11201)."""
POSTGRES_HOST, POSTGRES_PORT = "127.0.0.1", 5432
"""Where the local PostgreSQL server listens (``scripts/ensure_postgres.sh`` starts one)."""
POSTGRES_USERS = ("postgres", "root")
"""Roles tried in turn, without a password (local trust authentication)."""


def publish_output(out_dir: Path, tracking_uri: str, name: str) -> str:
    """Register a training output as a new version of ``name``; returns the version."""
    from training.tracking import publish

    result = publish(out_dir, tracking_uri=tracking_uri, register_name=name)
    return str(result.version)


def promote_version(name: str, version: str, tracking_uri: str) -> None:
    """Point ``name@champion`` at ``version``."""
    from training.tracking import promote

    promote(name, version, tracking_uri=tracking_uri)


def postgres_connection() -> Any | None:
    """An autocommit psycopg2 connection to the ``postgres`` database, or ``None`` when unreachable."""
    import psycopg2

    for user in POSTGRES_USERS:
        try:
            connection = psycopg2.connect(
                host=POSTGRES_HOST, port=POSTGRES_PORT, user=user, dbname="postgres", connect_timeout=3
            )
        except psycopg2.OperationalError:
            continue
        connection.autocommit = True
        return connection
    return None


class PostgresDatabase:
    """A throw-away PostgreSQL database on the local server (dropped by :meth:`drop`)."""

    def __init__(self, prefix: str = "celltype_reliability") -> None:
        connection = postgres_connection()
        if connection is None:
            raise RuntimeError(f"PostgreSQL is not reachable on {POSTGRES_HOST}:{POSTGRES_PORT}")
        self._connection = connection
        self.user = connection.get_dsn_parameters()["user"]
        self.name = f"{prefix}_{secrets.token_hex(5)}"
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{self.name}"')

    def uri(self, host: str = POSTGRES_HOST, port: int = POSTGRES_PORT) -> str:
        """SQLAlchemy URI of the database through ``host:port``."""
        return f"postgresql+psycopg2://{self.user}@{host}:{port}/{self.name}"

    def drop(self) -> None:
        """Drop the database (closing its connections) and the admin connection."""
        with self._connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self._connection.close()


class TcpProxy:
    """A loopback TCP forwarder to ``target`` that can be cut (a database outage) and restored.

    ``cut`` closes the listening socket and every forwarded connection, so new connections are
    refused and open ones drop; ``restore`` listens again on the same port.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        """Accept connections again."""
        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        listener.settimeout(0.2)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Refuse new connections and drop the open ones."""
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, []
        if listener is not None:
            listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while True:
                readable, _, _ = select.select(list(peers), [], [], 1.0)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for sock in (a, b):
                sock.close()


class MlflowServer:
    """``mlflow server`` on a fixed loopback port, restartable on the same store and artifacts.

    Args:
        backend_uri: the backend store (``sqlite:///...`` or ``postgresql+psycopg2://...``).
        artifacts: the ``--artifacts-destination`` directory (artifacts are proxied).
        workdir: where its log goes.
    """

    def __init__(self, backend_uri: str, artifacts: Path, workdir: Path) -> None:
        self.backend_uri = backend_uri
        self.artifacts = artifacts
        self.workdir = workdir
        self.port = free_port()
        self.process: Managed | None = None

    @property
    def uri(self) -> str:
        """The tracking URI."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 180) -> MlflowServer:
        """Start it and wait for ``/health``."""
        command = [
            sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend_uri,
            "--artifacts-destination", str(self.artifacts), "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", "1",
        ]  # fmt: skip
        env = child_env(
            MLFLOW_CREATE_MODEL_VERSION_SOURCE_VALIDATION_REGEX=SOURCE_REGEX,
            MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",  # GenAI jobs: unused here, 7 fewer processes
        )
        self.process = Managed(command, self.workdir / f"mlflow-{self.port}.log", env)
        try:
            wait_http(f"{self.uri}/health", self.process, timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL)."""
        if self.process is not None:
            self.process.stop()
            self.process = None

