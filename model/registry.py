"""Fetching a registered model's bundle from MLflow without ever loading the MLflow model.

A registered version (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``) carries the tag
``bundle_sha256``; :func:`fetch_bundle` downloads exactly two files of that version, ``manifest.json``
and ``model.safetensors`` (never the pyfunc, never a pickle), checks them against the tag and keeps
them in a cache directory keyed by the digest. ``runs:/RUN_ID/PATH`` works the same way with the run's
``bundle_sha256`` tag.

The default tracking URI is ``MLFLOW_TRACKING_URI``, else the SQLite file ``./mlflow.db`` (absolute),
the same default as training. A server that does not answer raises :class:`RegistryUnavailableError`
within seconds: celltype lowers MLflow's HTTP retries and timeout (:data:`CLIENT_DEFAULTS`) unless
you set ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` /
``MLFLOW_HTTP_REQUEST_TIMEOUT`` yourself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.bundle import MANIFEST_FILE, WEIGHTS_FILE, file_sha256
from model.errors import BundleError, CellTypeError, InputError

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
"""Environment variable MLflow (and celltype) read the tracking URI from."""
CACHE_DIR_ENV = "CELLTYPE_CACHE_DIR"
"""Environment variable naming the directory where fetched bundles are cached."""
BUNDLE_ARTIFACT_NAME = "bundle"
"""Name of the logged pyfunc's artifact that holds the bundle."""
BUNDLE_ARTIFACT_PATH = f"artifacts/{BUNDLE_ARTIFACT_NAME}"
"""Where a logged celltype pyfunc keeps the bundle, relative to the model's artifact root."""
BUNDLE_FILES = (MANIFEST_FILE, WEIGHTS_FILE)
"""The only files :func:`fetch_bundle` downloads."""
TAG_BUNDLE_SHA256 = "bundle_sha256"
TAG_GENE_LIST_HASH = "gene_list_hash"

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

_ALIAS = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_VERSION = re.compile(r"^[1-9][0-9]{0,9}$")
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_FORBIDDEN_NAME_CHARS = re.compile(r"[/\\:%'\"\x00-\x1f\x7f]")


class RegistryUnavailableError(CellTypeError):
    """The MLflow tracking server / registry store could not be reached or failed mid-way."""


class ModelNotFoundError(BundleError):
    """The registry has no such model, alias, version or run; the message lists what exists."""


@dataclass(frozen=True)
class ModelReference:
    """A parsed model URI: exactly one of ``version``, ``alias`` or ``run_id`` (with ``path``) is set."""

    uri: str
    name: str | None = None
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    path: str | None = None


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<absolute cwd>/mlflow.db`` (what training uses)."""
    configured = os.environ.get(TRACKING_URI_ENV, "").strip()
    if configured:
        return configured
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def default_cache_dir() -> Path:
    """``$CELLTYPE_CACHE_DIR``, else ``$XDG_CACHE_HOME/celltype/bundles`` (``~/.cache/celltype/bundles``)."""
    configured = os.environ.get(CACHE_DIR_ENV, "").strip()
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base) / "celltype" / "bundles"


def validate_model_name(name: str) -> str:
    """Return ``name`` if it is a safe registered-model name, else raise :class:`InputError`.

    Refused: empty names, surrounding whitespace, ``/``, ``\\``, ``:``, ``%``, quotes, control characters
    and names made only of dots, so a name can never climb out of a directory, smuggle a URI part or
    break a registry search filter.
    """
    if not isinstance(name, str) or not name or name != name.strip():
        raise InputError(f"invalid model name {name!r}: give a non-empty name without surrounding spaces")
    if _FORBIDDEN_NAME_CHARS.search(name) or set(name) <= {"."}:
        raise InputError(
            f"invalid model name {name!r}: names may not contain '/', '\\', ':', '%', quotes or control "
            "characters, or be made of dots only (e.g. use 'pbmc-classifier')"
        )
    return name


def validate_alias(alias: str) -> str:
    """Return ``alias`` if MLflow accepts it as an alias (letters, digits, ``_``, ``-``), else raise."""
    if not isinstance(alias, str) or not _ALIAS.match(alias):
        raise InputError(f"invalid alias {alias!r}: use 1-255 letters, digits, '_' or '-' (e.g. 'champion')")
    if alias.lower() == "latest" or re.fullmatch(r"[vV][0-9]+", alias):
        raise InputError(f"invalid alias {alias!r}: 'latest' and 'v<number>' are reserved by MLflow")
    return alias


def validate_version(version: str | int) -> str:
    """Return ``version`` as a string if it is a positive integer, else raise :class:`InputError`."""
    text = str(version).strip()
    if not _VERSION.match(text):
        raise InputError(f"invalid model version {version!r}: give a positive integer such as 3")
    return text


def parse_model_uri(uri: str) -> ModelReference:
    """Parse ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``runs:/RUN_ID/PATH``.

    Raises:
        InputError: any other form, or a name/path that could escape a directory (``..``, ``/``, ...).
    """
    text = str(uri).strip()
    if text.startswith("models:/"):
        rest = text[len("models:/") :]
        if "@" in rest:
            name, _, alias = rest.rpartition("@")
            return ModelReference(uri=text, name=validate_model_name(name), alias=validate_alias(alias))
        name, slash, version = rest.rpartition("/")
        if slash:
            return ModelReference(uri=text, name=validate_model_name(name), version=validate_version(version))
    elif text.startswith("runs:/"):
        run_id, _, path = text[len("runs:/") :].partition("/")
        if not _RUN_ID.match(run_id):
            raise InputError(f"invalid run id {run_id!r} in {text!r}: expected 32 hexadecimal characters")
        return ModelReference(uri=text, run_id=run_id, path=_safe_artifact_path(path, text))
    raise InputError(
        f"unsupported model URI {text!r}: use models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/PATH"
    )


def _safe_artifact_path(path: str, uri: str) -> str:
    parts = path.rstrip("/").split("/")
    if path.startswith("/") or "\\" in path or any(p in ("", ".", "..") for p in parts):
        raise InputError(
            f"invalid artifact path {path!r} in {uri!r}: give a relative path such as 'bundle' "
            "without '.', '..', '//' or '\\'"
        )
    if _FORBIDDEN_NAME_CHARS.search(path.replace("/", "")):
        raise InputError(
            f"invalid artifact path {path!r} in {uri!r}: it contains control characters, '%', ':' or quotes"
        )
    return "/".join(parts)


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
            "there yet: pass the tracking URI you trained with (--tracking-uri or MLFLOW_TRACKING_URI)"
        )


SQL_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
"""Database tracking-store schemes and their default ports, probed before MLflow connects."""


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
            current.error_code == "TEMPORARILY_UNAVAILABLE"
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


def _is_not_found(exc: BaseException) -> bool:
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException) and exc.error_code == "RESOURCE_DOES_NOT_EXIST"


def _listing(items: list[str], limit: int = 20) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _registered_model(client: Any, name: str, tracking_uri: str) -> Any:
    """The registered model ``name``, or :class:`ModelNotFoundError` listing the models that exist."""
    try:
        return client.get_registered_model(name)
    except Exception as exc:
        if not _is_not_found(exc):
            raise
    names = sorted(m.name for m in client.search_registered_models(max_results=200))
    known = f"registered models there: {_listing(names)}" if names else "no model is registered there yet"
    raise ModelNotFoundError(f"no registered model named {name!r} at {tracking_uri}; {known}") from None


def get_model_version(client: Any, name: str, version: str, tracking_uri: str) -> Any:
    """Version ``version`` of ``name``, or :class:`ModelNotFoundError` listing the versions that exist."""
    try:
        return client.get_model_version(name, version)
    except Exception as exc:
        if not _is_not_found(exc):
            raise
    _registered_model(client, name, tracking_uri)
    versions = sorted((str(mv.version) for mv in client.search_model_versions(f"name = '{name}'")), key=int)
    known = f"its versions: {_listing(versions)}" if versions else "it has no versions"
    raise ModelNotFoundError(f"model {name!r} has no version {version} at {tracking_uri}; {known}") from None


def alias_holder(client: Any, name: str, alias: str, tracking_uri: str) -> Any | None:
    """The version ``name@alias`` points to, ``None`` if the alias is unset.

    Raises:
        ModelNotFoundError: there is no registered model ``name`` (the message lists those that exist).
    """
    model = _registered_model(client, name, tracking_uri)
    version = dict(model.aliases or {}).get(alias)
    return None if version is None else client.get_model_version(name, str(version))


def get_version_by_alias(client: Any, name: str, alias: str, tracking_uri: str) -> Any:
    """The version ``name@alias`` points to, or :class:`ModelNotFoundError` listing the aliases."""
    holder = alias_holder(client, name, alias, tracking_uri)
    if holder is not None:
        return holder
    model = client.get_registered_model(name)
    aliases = [f"{a} -> version {v}" for a, v in sorted(dict(model.aliases or {}).items())]
    known = f"its aliases: {_listing(aliases)}" if aliases else "it has no aliases yet"
    raise ModelNotFoundError(
        f"model {name!r} has no alias {alias!r} at {tracking_uri}; {known}. "
        f"Set one with: celltype promote {name} --version N --alias {alias}"
    )


def _run(client: Any, run_id: str, tracking_uri: str) -> Any:
    try:
        return client.get_run(run_id)
    except Exception as exc:
        if not _is_not_found(exc):
            raise
    raise ModelNotFoundError(f"no run {run_id} at {tracking_uri}") from None


def fetch_bundle(
    uri: str, *, tracking_uri: str | None = None, dst: str | os.PathLike[str] | None = None
) -> tuple[Path, dict[str, Any]]:
    """Download the bundle of a registered model version (or run) and describe where it came from.

    Only ``manifest.json`` and ``model.safetensors`` are downloaded; nothing is unpickled or imported.
    Both are checked against the version's ``bundle_sha256`` tag before they enter the cache.

    Args:
        uri: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``runs:/RUN_ID/PATH``.
        tracking_uri: the MLflow tracking/registry URI (default: :func:`default_tracking_uri`).
        dst: cache directory (default: :func:`default_cache_dir`); the bundle lands in
            ``dst/<bundle_sha256>/`` and is reused from there when it is already complete.

    Returns:
        The bundle directory and ``{uri, name, version, alias, aliases, run_id, bundle_sha256,
        gene_list_hash, tracking_uri}``.

    Raises:
        InputError: malformed URI or path traversal.
        ModelNotFoundError: unknown model, alias, version or run (the message lists what exists).
        BundleError: no ``bundle_sha256`` tag, no bundle in the artifacts, or a checksum mismatch.
        RegistryUnavailableError: the tracking server / database cannot be reached.
    """
    reference = parse_model_uri(uri)
    tracking_uri = tracking_uri or default_tracking_uri()
    apply_client_defaults()
    check_reachable(tracking_uri)
    client = registry_client(tracking_uri)
    with unavailability_as_error(tracking_uri, f"resolve {reference.uri}"):
        if reference.run_id is not None:
            run = _run(client, reference.run_id, tracking_uri)
            tags, run_id = dict(run.data.tags), reference.run_id
            source = f"runs:/{reference.run_id}/{reference.path}"
            info: dict[str, Any] = {"name": None, "version": None, "alias": None, "aliases": []}
            owner = f"run {reference.run_id}"
        else:
            if reference.alias is not None:
                mv = get_version_by_alias(client, reference.name, reference.alias, tracking_uri)
            else:
                mv = get_model_version(client, reference.name, reference.version, tracking_uri)
            tags, run_id = dict(mv.tags or {}), mv.run_id or None
            download_uri = client.get_model_version_download_uri(reference.name, mv.version)
            source = f"{download_uri.rstrip('/')}/{BUNDLE_ARTIFACT_PATH}"
            info = {
                "name": reference.name,
                "version": str(mv.version),
                "alias": reference.alias,
                "aliases": sorted(mv.aliases or []),
            }
            owner = f"model {reference.name!r} version {mv.version}"
    digest = tags.get(TAG_BUNDLE_SHA256, "").strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise BundleError(
            f"{owner} has no valid {TAG_BUNDLE_SHA256} tag (got {digest or 'none'!r}), so its bundle cannot be "
            "verified; it was not registered by celltype. Register a training output with: "
            "celltype register OUT_DIR --register NAME"
        )
    cache_root = Path(dst) if dst is not None else default_cache_dir()
    directory = cache_root / digest
    if _verified_problem(directory, digest) is not None:
        with unavailability_as_error(tracking_uri, f"download the bundle of {owner}"):
            _download(source, directory, digest, tracking_uri, owner)
    info.update(
        uri=reference.uri,
        run_id=run_id,
        bundle_sha256=digest,
        gene_list_hash=tags.get(TAG_GENE_LIST_HASH) or _manifest(directory).get("gene_list_hash"),
        tracking_uri=tracking_uri,
    )
    return directory, info


def _manifest(directory: Path) -> dict[str, Any]:
    try:
        data = json.loads((directory / MANIFEST_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _verified_problem(directory: Path, digest: str) -> str | None:
    """``None`` if ``directory`` holds a bundle whose files match ``digest``, else what is wrong."""
    manifest_path, weights_path = directory / MANIFEST_FILE, directory / WEIGHTS_FILE
    if not manifest_path.is_file() or not weights_path.is_file():
        return "files are missing"
    actual = file_sha256(manifest_path)
    if actual != digest:
        return f"{MANIFEST_FILE} has sha256 {actual}, the version's {TAG_BUNDLE_SHA256} tag says {digest}"
    recorded = (_manifest(directory).get("weights") or {}).get("sha256")
    weights = file_sha256(weights_path)
    if weights != recorded:
        return f"{WEIGHTS_FILE} has sha256 {weights}, its manifest records {recorded}"
    return None


def _download(source: str, directory: Path, digest: str, tracking_uri: str, owner: str) -> None:
    """Download :data:`BUNDLE_FILES` from ``source`` into ``directory`` (atomically, verified)."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}.", dir=directory.parent))
    try:
        for filename in BUNDLE_FILES:
            try:
                download_artifacts(
                    artifact_uri=f"{source}/{filename}", dst_path=str(staging), tracking_uri=tracking_uri
                )
            except (MlflowException, OSError) as exc:
                if is_unavailability(exc):
                    raise
                raise BundleError(
                    f"{owner} has no celltype bundle: could not download {filename} from {source} "
                    f"({first_line(exc)})"
                ) from None
        problem = _verified_problem(staging, digest)
        if problem is not None:
            raise BundleError(
                f"the bundle of {owner} fails its checksum: {problem}; the artifact or the tag was "
                "modified after registration, so it is refused"
            )
        if directory.exists():
            shutil.rmtree(directory)
        try:
            os.replace(staging, directory)
        except OSError:
            if _verified_problem(directory, digest) is not None:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
