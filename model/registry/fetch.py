"""Fetching a registered model's bundle from MLflow without ever loading the MLflow model.

A registered version (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``) carries the tag
``bundle_sha256``; :func:`fetch_bundle` downloads exactly two files of that version, ``manifest.json``
and ``model.safetensors`` (never the pyfunc, never a pickle), checks them against the tag and keeps
them in a cache directory keyed by the digest (:func:`default_cache_dir`). ``runs:/RUN_ID/PATH`` works
the same way with the run's ``bundle_sha256`` tag. Unknown models, versions, aliases and runs raise
:class:`ModelNotFoundError` listing what exists (:func:`get_model_version`, :func:`get_version_by_alias`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from model.bundle import MANIFEST_FILE, WEIGHTS_FILE, file_sha256
from model.errors import BundleError
from model.registry.store import (
    apply_client_defaults,
    check_reachable,
    default_tracking_uri,
    first_line,
    is_unavailability,
    registry_client,
    unavailability_as_error,
)
from model.registry.uri import parse_model_uri

CACHE_DIR_ENV = "CELLTYPE_CACHE_DIR"
"""Environment variable naming the directory where fetched bundles are cached."""
BUNDLE_ARTIFACT_NAME = "bundle"
"""Name of the logged pyfunc's artifact that holds the bundle."""
BUNDLE_ARTIFACT_PATH = f"artifacts/{BUNDLE_ARTIFACT_NAME}"
"""Where a logged celltype pyfunc keeps the bundle, relative to the model's artifact root."""
BUNDLE_FILES = (MANIFEST_FILE, WEIGHTS_FILE)
"""The only files :func:`fetch_bundle` downloads."""
TAG_BUNDLE_SHA256 = "bundle_sha256"
"""Tag of a registered version (and its run): sha256 of the bundle's ``manifest.json``."""
TAG_GENE_LIST_HASH = "gene_list_hash"
"""Tag of a registered version: hash of the model's ordered gene list."""


class ModelNotFoundError(BundleError):
    """The registry has no such model, alias, version or run; the message lists what exists."""


def default_cache_dir() -> Path:
    """``$CELLTYPE_CACHE_DIR``, else ``$XDG_CACHE_HOME/celltype/bundles`` (``~/.cache/celltype/bundles``)."""
    configured = os.environ.get(CACHE_DIR_ENV, "").strip()
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base) / "celltype" / "bundles"


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
