"""The MLflow registry as a trained model needs it: find a registered model and fetch its bundle, safely.

Three modules, one job each:

- :mod:`model.registry.uri` — the grammar of model URIs (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
  ``runs:/RUN_ID/PATH``) and the checks of names, aliases and versions. No I/O.
- :mod:`model.registry.store` — the store's health: the default tracking URI, reachability probes,
  the process-wide MLflow client settings (``os.environ``) and :class:`RegistryUnavailableError`.
- :mod:`model.registry.fetch` — resolving a URI to a version and downloading its bundle, verified
  against the ``bundle_sha256`` tag, into a cache.

Why this is in ``model``: the Predictor (and so the service) loads ``models:/NAME@ALIAS``, which needs
the URI grammar, the fetch and, to fail fast with a clear message, the store health. Everything
else about MLflow (logging runs, registering and promoting versions) makes models and lives in
:mod:`training.tracking`. These modules and :mod:`model.pyfunc` are the only ones in ``model`` that
touch MLflow (``tests/test_architecture.py`` checks it).

The names below are the public interface; import them from here or from their module.
"""

from model.registry.fetch import (
    BUNDLE_ARTIFACT_NAME,
    BUNDLE_ARTIFACT_PATH,
    BUNDLE_FILES,
    CACHE_DIR_ENV,
    TAG_BUNDLE_SHA256,
    TAG_GENE_LIST_HASH,
    ModelNotFoundError,
    alias_holder,
    default_cache_dir,
    fetch_bundle,
    get_model_version,
    get_version_by_alias,
)
from model.registry.store import (
    CLIENT_DEFAULTS,
    HEALTHY_STATUS,
    REACHABILITY_TIMEOUT_S,
    SQL_DEFAULT_PORTS,
    TRACKING_URI_ENV,
    RegistryUnavailableError,
    apply_client_defaults,
    check_reachable,
    default_tracking_uri,
    first_line,
    is_unavailability,
    registry_client,
    short_cause,
    sqlite_path,
    unavailability_as_error,
)
from model.registry.uri import (
    ModelReference,
    parse_model_uri,
    validate_alias,
    validate_model_name,
    validate_version,
)

__all__ = [
    "BUNDLE_ARTIFACT_NAME",
    "BUNDLE_ARTIFACT_PATH",
    "BUNDLE_FILES",
    "CACHE_DIR_ENV",
    "CLIENT_DEFAULTS",
    "HEALTHY_STATUS",
    "REACHABILITY_TIMEOUT_S",
    "SQL_DEFAULT_PORTS",
    "TAG_BUNDLE_SHA256",
    "TAG_GENE_LIST_HASH",
    "TRACKING_URI_ENV",
    "ModelNotFoundError",
    "ModelReference",
    "RegistryUnavailableError",
    "alias_holder",
    "apply_client_defaults",
    "check_reachable",
    "default_cache_dir",
    "default_tracking_uri",
    "fetch_bundle",
    "first_line",
    "get_model_version",
    "get_version_by_alias",
    "is_unavailability",
    "parse_model_uri",
    "registry_client",
    "short_cause",
    "sqlite_path",
    "unavailability_as_error",
    "validate_alias",
    "validate_model_name",
    "validate_version",
]
