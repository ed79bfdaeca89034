"""Service settings: every knob of ``celltype serve``, read from ``CELLTYPE_*`` environment variables.

Command-line options override the environment; anything not given keeps the defaults below, which are
sized for a small CPU machine.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.genes import DEFAULT_MIN_OVERLAP

ENV_PREFIX = "CELLTYPE_"
"""Prefix of the environment variables that configure the service (``CELLTYPE_MODEL_URI`` ...)."""

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
"""Accepted values of ``log_level``."""


class Settings(BaseSettings):
    """Configuration of the prediction service.

    Attributes:
        model_uri: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a bundle directory.
        host: interface to listen on.
        port: TCP port to listen on.
        workers: server processes (each loads the model; metrics are aggregated across them).
        api_key: when set, every endpoint but ``/health/*`` needs it (``Authorization: Bearer`` or
            ``X-API-Key``).
        max_cells_per_request: more cells than this in one request is answered with 413.
        max_cells_per_report: more cells than this in one upload to the web page (``/v1/report``) is
            answered with 413 (the page is for whole files, so its limit is separate and larger).
        max_body_bytes: request bodies larger than this are cut off with 413 while they stream in.
        max_expanded_bytes: largest decompressed size of an uploaded ``.npz`` or ``.h5ad``.
        max_concurrency: requests decoded and predicted at the same time (worker threads; default:
            the number of CPU cores).
        max_queue: requests allowed to wait for a worker; beyond that the answer is 503.
        request_timeout_s: a request not answered within this many seconds gets 504.
        reload_interval_s: re-resolve ``model_uri`` this often and swap in a new version (0 = never).
        min_gene_overlap: least share of the model's genes a request must contain.
        device: ``auto``, ``cpu`` or ``cuda``.
        torch_threads: intra-op threads of each forward pass (``celltype serve`` sets them). Parallelism
            comes from ``max_concurrency`` requests running side by side; more threads per forward only
            add synchronization on a small, busy CPU.
        log_level: level of the JSON logs.
        tracking_uri: MLflow tracking URI for ``models:/`` URIs (default: ``MLFLOW_TRACKING_URI``).
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", protected_namespaces=())

    model_uri: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64)
    api_key: SecretStr | None = None
    max_cells_per_request: int = Field(10_000, ge=1)
    max_cells_per_report: int = Field(100_000, ge=1)
    max_body_bytes: int = Field(128 * 1024 * 1024, ge=1024)
    max_expanded_bytes: int = Field(1024 * 1024 * 1024, ge=1024)
    max_concurrency: int = Field(default_factory=lambda: max(2, os.cpu_count() or 2), ge=1, le=256)
    max_queue: int = Field(64, ge=0)
    request_timeout_s: float = Field(30.0, gt=0)
    reload_interval_s: float = Field(0.0, ge=0)
    min_gene_overlap: float = Field(DEFAULT_MIN_OVERLAP, ge=0.0, le=1.0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int = Field(1, ge=1, le=256)
    log_level: str = "info"
    tracking_uri: str | None = None

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        level = value.strip().lower()
        if level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}; got {value!r}")
        return level

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_means_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    def environment(self) -> dict[str, str]:
        """These settings as ``CELLTYPE_*`` environment variables (for worker processes to read back)."""
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if name == "api_key":
                value = self.api_key.get_secret_value() if self.api_key else None
            env[f"{ENV_PREFIX}{name.upper()}"] = str(value)
        return env
