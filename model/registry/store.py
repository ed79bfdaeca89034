"""The health of the MLflow store: which store, whether it answers, and what its failures mean.

The default tracking URI is ``MLFLOW_TRACKING_URI``, else the SQLite file ``./mlflow.db`` (absolute),
the same default as training. A store that does not answer raises :class:`RegistryUnavailableError`
within seconds: :func:`check_reachable` probes it before MLflow is asked anything, and
:func:`apply_client_defaults` lowers MLflow's HTTP retries and timeout (:data:`CLIENT_DEFAULTS`, set in
``os.environ`` for the whole process) unless you set ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` /
``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` / ``MLFLOW_HTTP_REQUEST_TIMEOUT`` yourself.
:func:`unavailability_as_error` turns connection failures met mid-way into the same error.

This stays in ``model`` because fetching a model for the Predictor (:mod:`model.registry.fetch`, used
by the service) needs it; training's publishing and promotion use it too.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from model.errors import CellTypeError

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
"""Environment variable MLflow (and celltype) read the tracking URI from."""
CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
"""MLflow client settings applied unless already set: a dead server fails in seconds, not minutes,
and downloads print no progress bars."""
REACHABILITY_TIMEOUT_S = 5.0
"""Seconds to wait for a tracking server's ``/health`` before calling it unreachable."""
HEALTHY_STATUS = (200, 401, 403)
"""``/health`` answers meaning "an MLflow server is there" (401/403: it wants credentials, which MLflow
reads from ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``/``TOKEN`` and reports itself if they are wrong)."""
SQL_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
"""Database tracking-store schemes and their default ports, probed before MLflow connects."""


class RegistryUnavailableError(CellTypeError):
    """The MLflow tracking server / registry store could not be reached or failed mid-way."""


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<absolute cwd>/mlflow.db`` (what training uses)."""
    configured = os.environ.get(TRACKING_URI_ENV, "").strip()
    if configured:
        return configured
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def apply_client_defaults() -> None:
    """Set :data:`CLIENT_DEFAULTS` for every variable the user has not set."""
    for key, value in CLIENT_DEFAULTS.items():
        os.environ.setdefault(key, value)


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (``None`` for other URIs and in-memory databases)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = tracking_uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(urllib.parse.unquote(path)) if path and path != ":memory:" else None


def check_reachable(tracking_uri: str, *, create: bool = False) -> None:
    """Fail fast with :class:`RegistryUnavailableError` when ``tracking_uri`` cannot be used.

    HTTP(S) servers must answer ``/health`` within :data:`REACHABILITY_TIMEOUT_S` seconds with one of
    :data:`HEALTHY_STATUS`. A database server (PostgreSQL, MySQL, MS SQL) must accept a TCP connection
    within that time (MLflow itself would retry for about two minutes). A SQLite database must exist,
    unless ``create`` is true.
    """
    scheme = urllib.parse.urlparse(tracking_uri).scheme
    if scheme in ("http", "https"):
        import requests

        try:
            answer = requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=REACHABILITY_TIMEOUT_S)
        except requests.exceptions.RequestException as exc:
            if isinstance(exc, requests.exceptions.Timeout):
                problem = f"no answer within {REACHABILITY_TIMEOUT_S:g} s"
            else:
                problem = short_cause(exc)
            raise RegistryUnavailableError(
                f"cannot reach the MLflow tracking server at {tracking_uri} ({problem}); check that it is "
                "running and that the URI is right (--tracking-uri or MLFLOW_TRACKING_URI)"
            ) from None
        if answer.status_code not in HEALTHY_STATUS:
            raise RegistryUnavailableError(
                f"{tracking_uri}/health answered HTTP {answer.status_code}, so it is not a working MLflow tracking "
                "server; check the URI (--tracking-uri or MLFLOW_TRACKING_URI) and the server's logs"
            )
        return
    if scheme.split("+")[0] in SQL_DEFAULT_PORTS:
        _check_database_port(tracking_uri, scheme)
        return
    database = sqlite_path(tracking_uri)
    if database is not None and not create and not database.is_file():
        raise RegistryUnavailableError(
            f"no MLflow database at {database} (tracking URI {tracking_uri}); nothing has been registered "
            "there yet. The default is ./mlflow.db in the current folder: point at the database you trained "
            "with, e.g. export MLFLOW_TRACKING_URI=sqlite:////absolute/path/to/mlflow.db (the line `make demo` "
            "prints), or pass --tracking-uri"
        )


def _check_database_port(tracking_uri: str, scheme: str) -> None:
    """Raise :class:`RegistryUnavailableError` unless the database server of ``tracking_uri`` accepts TCP."""
    import socket

    parsed = urllib.parse.urlparse(tracking_uri)
    host = parsed.hostname or "localhost"
    port = parsed.port or SQL_DEFAULT_PORTS[scheme.split("+")[0]]
    try:
        with socket.create_connection((host, port), timeout=REACHABILITY_TIMEOUT_S):
            pass
    except OSError as exc:
        raise RegistryUnavailableError(
            f"cannot reach the tracking database at {host}:{port} ({exc.strerror or exc}); check that it is "
            "running and that the URI is right (--tracking-uri or MLFLOW_TRACKING_URI)"
        ) from None


SERVER_FAILURE_CODES = ("TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR")
"""MLflow error codes of a server answering 5xx: older MLflow clients retried those and then raised "API
request ... failed with exception"; MLflow 3.18 raises the server's error code at once."""


def is_unavailability(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) means the store could not be reached or answered with 5xx."""
    import requests
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import InterfaceError, OperationalError

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            return True
        if isinstance(current, (OperationalError, InterfaceError, ConnectionError, TimeoutError)):
            return True
        if isinstance(current, MlflowException) and (
            current.error_code in SERVER_FAILURE_CODES
            or re.search(r"API request to \S+ failed with (exception|timeout)", current.message)
        ):
            return True
        current = current.__cause__ or current.__context__
    return False


@contextmanager
def unavailability_as_error(tracking_uri: str, action: str) -> Iterator[None]:
    """Turn store connection failures inside the block into :class:`RegistryUnavailableError`."""
    try:
        yield
    except CellTypeError:
        raise
    except Exception as exc:
        if is_unavailability(exc):
            raise RegistryUnavailableError(
                f"could not {action}: the MLflow store at {tracking_uri} is unreachable or failing "
                f"({short_cause(exc)})"
            ) from exc
        raise


def registry_client(tracking_uri: str) -> Any:
    """An ``MlflowClient`` bound to ``tracking_uri`` for tracking and registry alike."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of ``exc``'s message (its type name if empty), cut to ``limit`` characters."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short_cause(exc: BaseException) -> str:
    """What went wrong with a request, briefly: "connection refused", "HTTP 503 responses", ..."""
    text = str(exc)
    statuses = re.search(r"too many (\d{3}) error responses", text)
    if statuses:
        return f"it kept answering HTTP {statuses.group(1)}"
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if errno:
        return errno.group(1).strip().lower()
    return first_line(exc)
