"""The model being served, and swapping it for a newer one without dropping a request.

The store holds one :class:`ServedModel` at a time. Requests take a reference to it when they start
and keep using that model until they finish, so a reload replaces the reference atomically and never
changes the model under a request. A candidate that fails to download, fails its checksum or does
not load is refused and the current model keeps serving.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from model.errors import CellTypeError
from model.predict import Predictor
from model.provenance import redact_uri

logger = logging.getLogger(__name__)

SUMMARY_KEYS = ("name", "version", "alias", "run_id", "uri", "bundle_sha256")
"""The keys identifying a served model in responses, logs and metrics."""


class ModelLoadError(CellTypeError):
    """A model could not be fetched or loaded for a reason other than a bad bundle (registry down, ...)."""


class ReloadInProgressError(CellTypeError):
    """Another reload is already running."""


class NoModelConfiguredError(CellTypeError):
    """The service was started without a model URI, so there is nothing to (re)load."""


@dataclass(frozen=True)
class ServedModel:
    """A loaded model and what the service tells clients about it.

    Attributes:
        predictor: the model, ready to annotate.
        description: :meth:`Predictor.describe` with credentials removed from URIs.
        loaded_at: when this model was loaded (ISO 8601, UTC).
        lock: guards the predictor's gene-alignment cache across worker threads.
    """

    predictor: Predictor
    description: dict[str, Any]
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    @classmethod
    def from_predictor(cls, predictor: Predictor) -> ServedModel:
        """Wrap a loaded predictor."""
        description = {key: redact_uri(value) for key, value in predictor.describe().items()}
        return cls(predictor=predictor, description=description)

    @property
    def summary(self) -> dict[str, Any]:
        """Name, version, alias, run id, URI and digest (absent keys are left out)."""
        return {key: self.description[key] for key in SUMMARY_KEYS if self.description.get(key) is not None}


Loader = Callable[[str], Predictor]
"""Loads the model at a URI (``models:/...`` or a bundle directory)."""


class ModelStore:
    """Holds the served model and reloads it from its URI on demand.

    Args:
        uri: where the model comes from; ``None`` means no model until one is installed.
        loader: loads a URI into a :class:`Predictor` (verifying checksums).
        on_change: called with the new model after every successful load or swap.
    """

    def __init__(
        self,
        uri: str | None,
        loader: Loader,
        on_change: Callable[[ServedModel], None] | None = None,
    ) -> None:
        self.uri = uri
        self._loader = loader
        self._on_change = on_change
        self._current: ServedModel | None = None
        self._reload_lock = threading.Lock()

    @property
    def current(self) -> ServedModel | None:
        """The model serving now, or ``None`` before the first load."""
        return self._current

    def install(self, predictor: Predictor) -> ServedModel:
        """Serve ``predictor`` from now on (requests already running finish on the old model)."""
        served = ServedModel.from_predictor(predictor)
        self._current = served
        if self._on_change is not None:
            self._on_change(served)
        logger.info("model installed", extra={"model": served.summary})
        return served

    def load(self) -> ServedModel:
        """Load the model at :attr:`uri` and serve it.

        Raises:
            NoModelConfiguredError: no URI was configured.
            BundleError, InputError: the bundle is tampered with, malformed or cannot run here.
            ModelLoadError: anything else went wrong (registry unreachable, alias missing, ...).
        """
        return self.install(self.fetch())

    def reload(self) -> dict[str, Any]:
        """Re-resolve :attr:`uri` and swap in the model it points to if it differs from the current one.

        Returns ``{"status": "reloaded"|"unchanged", "previous": {...}, "current": {...}}``.
        On any error the current model keeps serving and the error propagates (see :meth:`load`).

        Raises:
            ReloadInProgressError: another reload is running.
        """
        if not self._reload_lock.acquire(blocking=False):
            raise ReloadInProgressError("a model reload is already running; try again when it has finished")
        try:
            previous = self._current
            candidate = self.fetch()
            if previous is not None and candidate.bundle.sha256 == previous.predictor.bundle.sha256:
                return {"status": "unchanged", "previous": previous.summary, "current": previous.summary}
            served = self.install(candidate)
            return {
                "status": "reloaded",
                "previous": previous.summary if previous is not None else None,
                "current": served.summary,
            }
        finally:
            self._reload_lock.release()

    def fetch(self) -> Predictor:
        """Load the model at :attr:`uri` without serving it (errors as :meth:`load` raises them)."""
        if self.uri is None:
            raise NoModelConfiguredError("no model URI is configured; start the service with --model")
        try:
            return self._loader(self.uri)
        except CellTypeError:
            raise
        except Exception as exc:  # registry clients raise many kinds; report them as one
            raise ModelLoadError(f"could not load model {redact_uri(self.uri)}: {exc}") from exc
