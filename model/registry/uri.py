"""The grammar of model URIs: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` and ``runs:/RUN_ID/PATH``.

:func:`parse_model_uri` turns a URI into a :class:`ModelReference` and refuses, with a message that
says what to send instead, any other form and any name or path that could climb out of a directory,
smuggle a URI part or break a registry search filter. Pure string checks: no MLflow, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from model.errors import InputError

_ALIAS = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_VERSION = re.compile(r"^[1-9][0-9]{0,9}$")
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_FORBIDDEN_NAME_CHARS = re.compile(r"[/\\:%'\"\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ModelReference:
    """A parsed model URI: exactly one of ``version``, ``alias`` or ``run_id`` (with ``path``) is set."""

    uri: str
    name: str | None = None
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    path: str | None = None


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
