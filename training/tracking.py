"""Publishing a training output directory to MLflow, and moving registry aliases.

:func:`publish` turns ``celltype train --out DIR`` into one MLflow run (config as params, per-epoch and
final metrics, reports, the bundle and a pickle-free pyfunc) and, given a model name, a new registered
version tagged with the bundle digest and its scores and aliased ``challenger``. :func:`promote` moves
an alias (``champion`` by default), optionally only when the version beats the current holder.
Registry stages are never used.

If the store cannot be reached or fails mid-way, :class:`~model.registry.store.RegistryUnavailableError`
says where the bundle is (it is only ever read) and the exact ``celltype register`` command to publish
it later.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from model.bundle import ModelBundle, load_bundle
from model.errors import CellTypeError, InputError
from model.provenance import celltype_version
from model.registry.fetch import TAG_BUNDLE_SHA256, TAG_GENE_LIST_HASH, alias_holder, get_model_version
from model.registry.store import (
    RegistryUnavailableError,
    apply_client_defaults,
    check_reachable,
    default_tracking_uri,
    registry_client,
    short_cause,
    sqlite_path,
    unavailability_as_error,
)
from model.registry.uri import validate_alias, validate_model_name, validate_version

DEFAULT_EXPERIMENT = "celltype"
CHALLENGER = "challenger"
"""Alias every newly registered version gets."""
CHAMPION = "champion"
"""Alias serving uses."""
DEFAULT_METRIC = "holdout_macro_f1"
FALLBACK_METRIC = "validation_macro_f1"
PUBLISHED_FILE = "published.json"
"""Written into the training output directory after a successful publish."""
PYFUNC_NAME = "model"
"""Name of the logged pyfunc model inside the run."""

_MAX_PARAM_LENGTH = 6000
_MAX_KEY_LENGTH = 250
_NOT_A_METRIC = {"epoch", "step"}


class PromotionError(CellTypeError):
    """An alias could not be moved as asked (e.g. the metric to compare on is missing)."""


@dataclass(frozen=True)
class TrainingOutput:
    """A training output directory as read by :func:`read_training_output`."""

    directory: Path
    bundle: ModelBundle
    config: dict[str, Any]
    history: list[dict[str, Any]]
    metrics: dict[str, Any]

    @property
    def bundle_dir(self) -> Path:
        """The bundle's directory."""
        return self.directory / "bundle"


@dataclass(frozen=True)
class PublishResult:
    """Where a training output was published.

    Attributes:
        tracking_uri: the MLflow tracking / registry URI.
        experiment_id: the run's experiment.
        run_id: the MLflow run.
        model_uri: the logged pyfunc (``models:/m-...``).
        bundle_sha256: digest of the published bundle.
        registered_name: the registered model, if one was asked for.
        version: the new model version, if registered.
        alias: the alias set on it (``challenger``); ``None`` when nothing was registered or reused.
        record_path: the ``published.json`` describing this publication.
        reused: true when the directory had already been published there and nothing was done.
    """

    tracking_uri: str
    experiment_id: str
    run_id: str
    model_uri: str
    bundle_sha256: str
    registered_name: str | None
    version: str | None
    alias: str | None
    record_path: Path
    reused: bool = False

    @property
    def version_uri(self) -> str | None:
        """``models:/NAME/VERSION`` of the registered version, if any."""
        return f"models:/{self.registered_name}/{self.version}" if self.version else None


@dataclass(frozen=True)
class PromoteResult:
    """What :func:`promote` did.

    Attributes:
        name: the registered model.
        version: the version that was to be promoted.
        alias: the alias.
        moved: whether the alias now points to ``version`` because of this call.
        reason: one sentence saying what happened and why.
        previous_version: the version the alias pointed to before (``None`` if unset).
        metric: the tag compared (``--if-better`` only).
        candidate_score: ``version``'s value of ``metric``.
        incumbent_score: the previous holder's value of ``metric``.
    """

    name: str
    version: str
    alias: str
    moved: bool
    reason: str
    previous_version: str | None = None
    metric: str | None = None
    candidate_score: float | None = None
    incumbent_score: float | None = None


def resolve_tracking_uri(cli_value: str | None = None) -> str:
    """``--tracking-uri`` if given, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<absolute cwd>/mlflow.db``."""
    if cli_value is not None and cli_value.strip():
        return cli_value.strip()
    return default_tracking_uri()


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(
            f"{path.parent} is not a complete celltype training output: {path.name} ({what}) is missing; "
            "pass the --out directory of `celltype train`"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {path} ({what}): {exc}") from None


def read_training_output(out_dir: str | os.PathLike[str]) -> TrainingOutput:
    """Read and check a training output directory (``bundle/``, ``config.json``, ``metrics.json``, ...).

    ``history.json``, ``reports/`` and ``data_report.json`` are optional; the bundle's checksums are
    verified.

    Raises:
        InputError: the directory or a required file is missing or unreadable.
        BundleError: the bundle is incomplete or fails its checksum.
    """
    directory = Path(out_dir).resolve()
    if not directory.is_dir():
        raise InputError(f"training output directory {directory} does not exist")
    bundle = load_bundle(directory / "bundle")
    config = _read_json(directory / "config.json", "the resolved training config")
    metrics = _read_json(directory / "metrics.json", "the final scores")
    history_path = directory / "history.json"
    history = _read_json(history_path, "per-epoch history") if history_path.exists() else []
    if not isinstance(config, dict) or not isinstance(metrics, dict):
        raise InputError(f"{directory}: config.json and metrics.json must each hold a JSON object")
    if not isinstance(history, list) or not all(isinstance(e, dict) for e in history):
        raise InputError(f"{history_path} must hold a JSON list of per-epoch objects")
    return TrainingOutput(directory=directory, bundle=bundle, config=config, history=history, metrics=metrics)


def _key(parts: list[str]) -> str:
    """A valid MLflow param/metric key from path parts (other characters become ``_``)."""
    cleaned = [re.sub(r"[^\w.\- ]", "_", str(p)).strip() or "_" for p in parts]
    cleaned = ["_" if set(p) <= {"."} else p for p in cleaned]
    return "/".join(cleaned)[:_MAX_KEY_LENGTH]


def flatten_params(config: dict[str, Any]) -> dict[str, str]:
    """Nested config as ``a.b.c`` keys with string values (lists as JSON, cut to MLflow's 6000 chars)."""
    params: dict[str, str] = {}

    def visit(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                visit(value, f"{prefix}.{key}" if prefix else str(key))
            return
        text = node if isinstance(node, str) else json.dumps(node, default=str)
        if len(text) > _MAX_PARAM_LENGTH:
            text = text[: _MAX_PARAM_LENGTH - 3] + "..."
        params[_key([prefix])] = text

    visit(config, "")
    return params


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _section_metrics(section: str, node: Any, parts: list[str], out: dict[str, float]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            _section_metrics(section, value, [*parts, str(key)], out)
        return
    value = _number(node)
    if value is None or not parts:
        return
    name = _key([f"{section}_{parts[0]}"]) if len(parts) == 1 else _key([section, *parts])
    out[name] = value


def final_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Flatten ``metrics.json`` into MLflow metrics.

    Direct scores become ``validation_macro_f1``, ``holdout_accuracy`` (from ``holdout.overall``),
    ``calibration_ece_after``; nested ones keep their path: ``holdout/per_batch/lab3/macro_f1``,
    ``validation/per_class/B/f1``. Non-numeric and non-finite values are skipped.
    """
    out: dict[str, float] = {}
    for section, node in metrics.items():
        if section == "holdout" and isinstance(node, dict):
            for key, value in node.items():
                _section_metrics("holdout", value, [] if key == "overall" else [str(key)], out)
        else:
            _section_metrics(str(section), node, [], out)
    return out


def history_metrics(history: list[dict[str, Any]]) -> list[tuple[str, float, int]]:
    """``(key, value, epoch)`` for every numeric per-epoch value of ``history.json`` (epoch is the step)."""
    rows = []
    for position, entry in enumerate(history):
        epoch = entry.get("epoch", position)
        step = int(epoch) if _number(epoch) is not None else position
        for key, value in entry.items():
            number = _number(value)
            if key not in _NOT_A_METRIC and number is not None:
                rows.append((_key([key]), number, step))
    return rows


def _joined(value: Any) -> str | None:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or None
    return str(value) if value not in (None, "") else None


def _celltype_version(bundle: ModelBundle) -> str:
    recorded = bundle.metadata.get("celltype_version")
    return str(recorded) if recorded else celltype_version()


def version_tags(output: TrainingOutput) -> dict[str, str]:
    """Tags of a registered version: digest, gene list hash, data, batches, scores, celltype version."""
    bundle, metadata = output.bundle, output.bundle.metadata
    holdout = output.metrics.get("holdout") or {}
    overall = holdout.get("overall") if isinstance(holdout, dict) else None
    overall = overall or metadata.get("holdout_scores") or {}
    validation = output.metrics.get("validation") or metadata.get("validation_scores") or {}
    candidates = {
        TAG_BUNDLE_SHA256: bundle.sha256,
        TAG_GENE_LIST_HASH: bundle.gene_list_hash,
        "dataset": _joined(metadata.get("datasets")),
        "batches": _joined(metadata.get("train_batches")),
        "holdout_batches": _joined(metadata.get("holdout_batches")),
        "holdout_macro_f1": _number(overall.get("macro_f1")),
        "holdout_accuracy": _number(overall.get("accuracy")),
        "validation_macro_f1": _number(validation.get("macro_f1")),
        "validation_accuracy": _number(validation.get("accuracy")),
        "celltype_version": _celltype_version(bundle),
    }
    return {
        key: repr(value) if isinstance(value, float) else value
        for key, value in candidates.items()
        if value is not None
    }


def register_later_command(out_dir: Path, register_name: str | None, tracking_uri: str) -> str:
    """The exact ``celltype register`` command that publishes ``out_dir`` later."""
    name = shlex.quote(register_name) if register_name else "NAME"
    return (
        f"celltype register {shlex.quote(str(out_dir))} --register {name} "
        f"--tracking-uri {shlex.quote(tracking_uri)}"
    )


@contextmanager
def _fluent_tracking_uri(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (needed by ``log_model``) and registry at ``tracking_uri``, then restore them.

    MLflow's own helper restores its global URI but clears ``MLFLOW_TRACKING_URI``; that variable is
    put back here too.
    """
    from mlflow.tracking import _model_registry
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    variable = "MLFLOW_TRACKING_URI"
    saved_env = os.environ.get(variable)
    # The registry URI is global too: pin it to the same store, so a URI someone set earlier in this
    # process can never send the registration elsewhere.
    saved_registry = _model_registry.utils._registry_uri
    _model_registry.utils._registry_uri = tracking_uri
    try:
        with _use_tracking_uri(tracking_uri):
            yield
    finally:
        _model_registry.utils._registry_uri = saved_registry
        if saved_env is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = saved_env


def _experiment_id(client: Any, name: str, tracking_uri: str) -> str:
    """The id of experiment ``name``, created if needed (SQLite stores keep artifacts next to the DB)."""
    from mlflow.exceptions import MlflowException

    existing = client.get_experiment_by_name(name)
    if existing is not None:
        if existing.lifecycle_stage == "deleted":
            raise InputError(
                f"experiment {name!r} is deleted at {tracking_uri}; restore it "
                f"(mlflow experiments restore --experiment-id {existing.experiment_id}) or pass another --experiment"
            )
        return existing.experiment_id
    database = sqlite_path(tracking_uri)
    location = (database.resolve().parent / "mlartifacts").as_uri() if database is not None else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


def _read_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def _write_record(path: Path, record: dict[str, Any]) -> None:
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w") as stream:
        json.dump(record, stream, indent=2, sort_keys=True)
        stream.write("\n")
    os.replace(staging, path)


def _result_from_record(record: dict[str, Any], path: Path, *, reused: bool) -> PublishResult:
    return PublishResult(
        tracking_uri=record["tracking_uri"],
        experiment_id=str(record["experiment_id"]),
        run_id=record["run_id"],
        model_uri=record["model_uri"],
        bundle_sha256=record["bundle_sha256"],
        registered_name=record.get("registered_model"),
        version=record.get("version"),
        alias=None if reused else record.get("alias"),
        record_path=path,
        reused=reused,
    )


def _previous_publication(
    output: TrainingOutput, client: Any, tracking_uri: str, register_name: str | None
) -> PublishResult | None:
    """The earlier publication of this exact bundle to this store, if it is still there."""
    from mlflow.exceptions import MlflowException

    path = output.directory / PUBLISHED_FILE
    record = _read_record(path)
    if record.get("tracking_uri") != tracking_uri or record.get("bundle_sha256") != output.bundle.sha256:
        return None
    try:
        if register_name is None:
            client.get_run(record["run_id"])
        else:
            if record.get("registered_model") != register_name or not record.get("version"):
                return None
            version = client.get_model_version(register_name, record["version"])
            if (version.tags or {}).get(TAG_BUNDLE_SHA256) != output.bundle.sha256:
                return None
        return _result_from_record(record, path, reused=True)
    except (MlflowException, KeyError, TypeError):
        return None


def _log_run(output: TrainingOutput, client: Any, run_id: str) -> None:
    """Params, per-epoch and final metrics, and the output directory's files as artifacts."""
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    metrics = [Metric(key, value, now, step) for key, value, step in history_metrics(output.history)]
    metrics += [Metric(key, value, now, 0) for key, value in final_metrics(output.metrics).items()]
    params = [Param(key, value) for key, value in flatten_params(output.config).items()]
    client.log_batch(run_id, metrics=metrics, params=params)
    directory = output.directory
    for filename in ("config.json", "history.json", "metrics.json", "data_report.json"):
        if (directory / filename).is_file():
            client.log_artifact(run_id, str(directory / filename))
    if (directory / "reports").is_dir():
        client.log_artifacts(run_id, str(directory / "reports"), "reports")
    client.log_artifacts(run_id, str(output.bundle_dir), "bundle")


def _register(client: Any, name: str, run_id: str, model_info: Any, tags: dict[str, str]) -> str:
    """Create version N of ``name`` from the logged pyfunc, tag it and alias it ``challenger``."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="celltype cell-type classifier")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(
        name, source=model_info.model_uri, run_id=run_id, tags=tags, model_id=model_info.model_id
    )
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    return str(version.version)


def publish(
    out_dir: str | os.PathLike[str],
    *,
    tracking_uri: str,
    register_name: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
) -> PublishResult:
    """Publish a training output directory as an MLflow run and, optionally, a registered version.

    Logs the resolved config as params, ``history.json`` per epoch (step = epoch), the final scores,
    ``reports/``, ``data_report.json`` and the bundle (under ``bundle/``) as artifacts, and the pyfunc
    model. With ``register_name`` a new version is created, tagged (``bundle_sha256``,
    ``gene_list_hash``, ``dataset``, ``batches``, ``holdout_macro_f1``, ``holdout_accuracy``,
    ``validation_macro_f1``, ``celltype_version``, ...) and aliased ``challenger``. The result is
    written to ``out_dir/published.json``. Publishing the same bundle to the same store and name again
    does nothing and returns the earlier result (``reused=True``).

    Raises:
        InputError, BundleError: ``out_dir`` is not a complete, intact training output, or the model
            name is invalid (checked before anything is sent).
        RegistryUnavailableError: the store is unreachable or failed mid-way; the message says where
            the (untouched) bundle is and the ``celltype register`` command to publish it later.
    """
    import requests
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    output = read_training_output(out_dir)
    if register_name is not None:
        validate_model_name(register_name)
    apply_client_defaults()
    progress: dict[str, str] = {}
    try:
        database = sqlite_path(tracking_uri)
        if database is not None:
            database.resolve().parent.mkdir(parents=True, exist_ok=True)
        check_reachable(tracking_uri, create=True)
        client = registry_client(tracking_uri)
        with unavailability_as_error(tracking_uri, "publish"):
            previous = _previous_publication(output, client, tracking_uri, register_name)
            if previous is not None:
                return previous
            record = _publish_run(
                output, client, tracking_uri, register_name, experiment, run_name, tags, progress
            )
    except (
        RegistryUnavailableError,
        MlflowException,
        requests.RequestException,
        SQLAlchemyError,
        OSError,
    ) as exc:
        reason = (
            str(exc)
            if isinstance(exc, RegistryUnavailableError)
            else f"publishing to {tracking_uri} failed: {short_cause(exc)}"
        )
        partial = f" (the partial run {progress['run_id']} is left there)" if progress else ""
        raise RegistryUnavailableError(
            f"{reason}{partial}. The trained model is safe at {output.bundle_dir}. Publish it later with: "
            f"{register_later_command(output.directory, register_name, tracking_uri)}"
        ) from exc
    path = output.directory / PUBLISHED_FILE
    try:
        _write_record(path, record)
    except OSError as exc:
        raise CellTypeError(
            f"published as run {record['run_id']} (version {record['version'] or 'not registered'}) at "
            f"{tracking_uri}, but could not write {path}: {exc}"
        ) from exc
    return _result_from_record(record, path, reused=False)


def _publish_run(
    output: TrainingOutput,
    client: Any,
    tracking_uri: str,
    register_name: str | None,
    experiment: str,
    run_name: str | None,
    tags: dict[str, str] | None,
    progress: dict[str, str],
) -> dict[str, Any]:
    """Create the run (and the version), recording the run id in ``progress``; return the record."""
    import mlflow

    from model.pyfunc import log_pyfunc

    experiment_id = _experiment_id(client, experiment, tracking_uri)
    run_tags = {
        TAG_BUNDLE_SHA256: output.bundle.sha256,
        TAG_GENE_LIST_HASH: output.bundle.gene_list_hash,
        "celltype_version": _celltype_version(output.bundle),
        "training_output": str(output.directory),
        **(tags or {}),
    }
    version = None
    # registering inside the block: a client-side SQL registry resolves models:/m-... sources through
    # MLflow's global tracking URI
    with (
        _fluent_tracking_uri(tracking_uri),
        mlflow.start_run(
            experiment_id=experiment_id,
            run_name=run_name,
            tags=run_tags,
            nested=mlflow.active_run() is not None,
        ) as run,
    ):
        progress["run_id"] = run.info.run_id
        _log_run(output, client, run.info.run_id)
        model_info = log_pyfunc(output.bundle_dir, name=PYFUNC_NAME)
        if register_name is not None:
            version = _register(client, register_name, run.info.run_id, model_info, version_tags(output))
    return {
        "tracking_uri": tracking_uri,
        "experiment": experiment,
        "experiment_id": experiment_id,
        "run_id": run.info.run_id,
        "model_uri": model_info.model_uri,
        "bundle_sha256": output.bundle.sha256,
        "registered_model": register_name,
        "version": version,
        "alias": CHALLENGER if version else None,
        "version_uri": f"models:/{register_name}/{version}" if version else None,
        "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _score(version: Any, metric: str) -> float | None:
    """The numeric value of tag ``metric`` on ``version`` (``None`` when the tag is absent)."""
    raw = (version.tags or {}).get(metric)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise PromotionError(f"version {version.version}'s {metric} tag is not a usable number: {raw!r}")
    return value


def _numeric_tags(version: Any) -> set[str]:
    """Names of ``version``'s tags whose values are finite numbers."""
    names = set()
    for key, raw in (version.tags or {}).items():
        try:
            if math.isfinite(float(raw)):
                names.add(key)
        except ValueError:
            continue
    return names


def _comparison(candidate: Any, incumbent: Any, metric: str, alias: str) -> tuple[str, float, float, str]:
    """``(metric, candidate score, incumbent score, note)``, falling back from holdout to validation."""
    scores = (_score(candidate, metric), _score(incumbent, metric))
    note = ""
    if scores == (None, None) and metric.startswith("holdout_"):
        fallback = "validation_" + metric[len("holdout_") :]
        fallback_scores = (_score(candidate, fallback), _score(incumbent, fallback))
        if None not in fallback_scores:
            note = f" (neither version has a {metric} tag, so {fallback} was compared instead)"
            metric, scores = fallback, fallback_scores
    if None in scores:
        lacking = [v.version for v, s in zip((candidate, incumbent), scores, strict=True) if s is None]
        who = " and ".join(f"version {v}" for v in lacking)
        shared = sorted(k for k in _numeric_tags(candidate) & _numeric_tags(incumbent) if k != metric)
        choices = f"tags both carry: {', '.join(shared)}" if shared else "they share no numeric tag"
        raise PromotionError(
            f"cannot compare version {candidate.version} with {alias} version {incumbent.version} on {metric}: "
            f"{who} {'has' if len(lacking) == 1 else 'have'} no {metric} tag. Choose another metric with "
            f"--metric ({choices}), or promote without --if-better"
        )
    return metric, scores[0], scores[1], note


def promote(
    name: str,
    version: str | int,
    *,
    tracking_uri: str,
    alias: str = CHAMPION,
    if_better: bool = False,
    metric: str = DEFAULT_METRIC,
) -> PromoteResult:
    """Point ``name@alias`` at ``version``; with ``if_better`` only if it beats the current holder.

    Scores are the versions' tags (higher is better). If both versions lack a ``holdout_*`` metric,
    the matching ``validation_*`` tag is compared instead and the reason says so.

    Raises:
        InputError: invalid name, version or alias.
        ModelNotFoundError: unknown model or version (the message lists what exists).
        PromotionError: ``if_better`` but the metric is missing or not a number on either version.
        RegistryUnavailableError: the store cannot be reached.
    """
    name, version, alias = validate_model_name(name), validate_version(version), validate_alias(alias)
    if not metric or not metric.strip():
        raise InputError("the metric to compare on must be a tag name such as holdout_macro_f1")
    apply_client_defaults()
    check_reachable(tracking_uri)
    client = registry_client(tracking_uri)
    with unavailability_as_error(tracking_uri, f"promote {name} version {version}"):
        candidate = get_model_version(client, name, version, tracking_uri)
        incumbent = alias_holder(client, name, alias, tracking_uri)
        previous = str(incumbent.version) if incumbent is not None else None
        result = PromoteResult(
            name=name, version=version, alias=alias, moved=False, reason="", previous_version=previous
        )
        if previous == version:
            return replace(result, reason=f"{name}@{alias} already points to version {version}")
        detail = ""
        if if_better and incumbent is not None:
            used, mine, theirs, note = _comparison(candidate, incumbent, metric, alias)
            result = replace(result, metric=used, candidate_score=mine, incumbent_score=theirs)
            if not mine > theirs:
                reason = (
                    f"{name}@{alias} stays on version {previous}: version {version} has {used} {mine:.4f}, "
                    f"not better than {theirs:.4f}{note}"
                )
                return replace(result, reason=reason)
            detail = f": {used} {mine:.4f} > {theirs:.4f}{note}"
        client.set_registered_model_alias(name, alias, version)
    origin = f"from version {previous}" if previous else "(it was not set before)"
    return replace(
        result, moved=True, reason=f"{name}@{alias} now points to version {version} {origin}{detail}"
    )
