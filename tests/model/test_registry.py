"""Fetching bundles from the MLflow registry (model.registry) and the pickle-free pyfunc (model.pyfunc).

Versions are registered here with MLflow directly (log_pyfunc + create_model_version + the digest tag),
against both the shared SQLite store and the PostgreSQL-backed ``mlflow server``.
"""

from __future__ import annotations

import json
import pickle
import time
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.tracking._tracking_service.utils import _use_tracking_uri

from model.bundle import MANIFEST_FILE, WEIGHTS_FILE, file_sha256, load_bundle
from model.errors import BundleError, InputError
from model.outputs import UNKNOWN_REASON_COLUMN
from model.predict import Predictor
from model.pyfunc import LABEL_COLUMN, log_pyfunc, predictions_frame, probability_column
from model.registry import (
    ModelNotFoundError,
    RegistryUnavailableError,
    default_tracking_uri,
    fetch_bundle,
    parse_model_uri,
)
from tests.conftest import MlflowStore

RUN_ID = "0123456789abcdef0123456789abcdef"


def unique_name() -> str:
    return f"ct-{uuid.uuid4().hex[:10]}"


def experiment_id(client: MlflowClient, store: MlflowStore) -> str:
    found = client.get_experiment_by_name("registry-tests")
    if found is not None:
        return found.experiment_id
    location = store.artifacts_dir.as_uri() if store.kind == "sqlite" else None
    return client.create_experiment("registry-tests", artifact_location=location)


def register(store: MlflowStore, bundle_dir: Path, name: str, *, alias: str | None = "challenger"):
    """Log ``bundle_dir`` as a pyfunc (and as run artifact ``bundle``) and register it under ``name``."""
    client = MlflowClient(tracking_uri=store.uri, registry_uri=store.uri)
    digest = load_bundle(bundle_dir).sha256
    # a client-side SQL registry resolves models:/m-... sources through the global tracking URI
    with _use_tracking_uri(store.uri):
        with mlflow.start_run(experiment_id=experiment_id(client, store)) as run:
            info = log_pyfunc(bundle_dir)
            mlflow.log_artifacts(str(bundle_dir), "bundle")
            mlflow.set_tag("bundle_sha256", digest)
        client.create_registered_model(name)
        version = client.create_model_version(
            name,
            source=info.model_uri,
            run_id=run.info.run_id,
            model_id=info.model_id,
            tags={"bundle_sha256": digest},
        )
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return client, version, info


def stored_file(store: MlflowStore, model_id: str, filename: str) -> Path:
    """The artifact store's copy of the bundle file ``filename`` of logged model ``model_id``."""
    matches = [p for p in store.artifacts_dir.rglob(filename) if model_id in p.parts and "bundle" in p.parts]
    assert len(matches) == 1, matches
    return matches[0]


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("models:/pbmc@champion", {"name": "pbmc", "alias": "champion"}),
        ("models:/pbmc/12", {"name": "pbmc", "version": "12"}),
        ("models:/my model.v2/3", {"name": "my model.v2", "version": "3"}),
        (f"runs:/{RUN_ID}/bundle", {"run_id": RUN_ID, "path": "bundle"}),
    ],
)
def test_model_uris_are_parsed(uri, expected):
    reference = parse_model_uri(uri)
    assert {k: getattr(reference, k) for k in expected} == expected


@pytest.mark.parametrize(
    "uri",
    [
        "models:/../x/1",
        "models:/../x@champion",
        "models:/a/../b/1",
        "models:/../1",
        "models:/..@champion",
        "models:/%2e%2e/1",
        "models:/x\\..\\y/1",
        f"runs:/{RUN_ID}/../secrets",
        f"runs:/{RUN_ID}//etc/passwd",
        "runs:/not-a-run-id/bundle",
        "models:/x",
        "models:/x/0",
        "models:/x/latest",
        "models:/x@latest",
        "models:/x@v3",
        "s3://bucket/model",
        "/some/path",
    ],
)
def test_traversal_and_malformed_uris_are_refused_before_any_request(uri, unreachable_tracking_uri):
    with pytest.raises(InputError):
        fetch_bundle(uri, tracking_uri=unreachable_tracking_uri)


def test_default_tracking_uri_is_the_environment_else_sqlite_in_cwd(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert default_tracking_uri() == "http://mlflow.example:5000"


def test_fetch_by_alias_and_version_downloads_only_the_bundle(mlflow_store, bundle_dir, counts, bundle_cache):
    name = unique_name()
    _, version, _ = register(mlflow_store, bundle_dir, name)
    by_alias, info = fetch_bundle(f"models:/{name}@challenger", tracking_uri=mlflow_store.uri)
    by_version, info_v = fetch_bundle(f"models:/{name}/{version.version}", tracking_uri=mlflow_store.uri)

    local = load_bundle(bundle_dir)
    assert by_alias == by_version == bundle_cache / local.sha256
    assert sorted(p.name for p in by_alias.iterdir()) == [MANIFEST_FILE, WEIGHTS_FILE]
    assert info == {
        "uri": f"models:/{name}@challenger",
        "name": name,
        "version": str(version.version),
        "alias": "challenger",
        "aliases": ["challenger"],
        "run_id": version.run_id,
        "bundle_sha256": local.sha256,
        "gene_list_hash": local.gene_list_hash,
        "tracking_uri": mlflow_store.uri,
    }
    assert info_v["alias"] is None and info_v["version"] == str(version.version)

    expected = Predictor(local, device="cpu").predict_proba(counts)
    for uri in (f"models:/{name}@challenger", f"models:/{name}/{version.version}"):
        loaded = Predictor.load(uri, tracking_uri=mlflow_store.uri, device="cpu")
        np.testing.assert_array_equal(loaded.predict_proba(counts), expected)
        assert loaded.describe()["name"] == name


def test_runs_uri_uses_the_run_digest_tag(mlflow_sqlite_store, bundle_dir, bundle_cache):
    _, version, _ = register(mlflow_sqlite_store, bundle_dir, unique_name(), alias=None)
    directory, info = fetch_bundle(f"runs:/{version.run_id}/bundle", tracking_uri=mlflow_sqlite_store.uri)
    assert info["run_id"] == version.run_id and info["name"] is None
    assert (
        load_bundle(directory, expected_sha256=info["bundle_sha256"]).sha256 == load_bundle(bundle_dir).sha256
    )


def test_cached_bundle_is_reused_and_repaired(mlflow_sqlite_store, bundle_dir, tmp_path):
    name = unique_name()
    register(mlflow_sqlite_store, bundle_dir, name)
    uri, cache = f"models:/{name}@challenger", tmp_path / "cache"
    directory, _ = fetch_bundle(uri, tracking_uri=mlflow_sqlite_store.uri, dst=cache)
    first_mtime = (directory / WEIGHTS_FILE).stat().st_mtime_ns
    assert fetch_bundle(uri, tracking_uri=mlflow_sqlite_store.uri, dst=cache)[0] == directory
    assert (directory / WEIGHTS_FILE).stat().st_mtime_ns == first_mtime

    (directory / WEIGHTS_FILE).write_bytes(b"corrupted")
    repaired, info = fetch_bundle(uri, tracking_uri=mlflow_sqlite_store.uri, dst=cache)
    assert repaired == directory
    load_bundle(repaired, expected_sha256=info["bundle_sha256"])


def test_unknown_model_alias_and_version_say_what_exists(mlflow_store, bundle_dir, bundle_cache):
    name = unique_name()
    register(mlflow_store, bundle_dir, name)
    with pytest.raises(
        ModelNotFoundError, match=rf"no alias 'champion'.*challenger -> version 1.*celltype promote {name}"
    ):
        fetch_bundle(f"models:/{name}@champion", tracking_uri=mlflow_store.uri)
    with pytest.raises(ModelNotFoundError, match=r"has no version 7 .*its versions: 1$"):
        fetch_bundle(f"models:/{name}/7", tracking_uri=mlflow_store.uri)
    with pytest.raises(
        ModelNotFoundError,
        match=rf"no registered model named 'nope-{name}'.*registered models there: .*{name}",
    ):
        fetch_bundle(f"models:/nope-{name}@champion", tracking_uri=mlflow_store.uri)
    with pytest.raises(ModelNotFoundError, match=f"no run {RUN_ID}"):
        fetch_bundle(f"runs:/{RUN_ID}/bundle", tracking_uri=mlflow_store.uri)


def test_tampered_tag_is_refused(mlflow_store, bundle_dir, bundle_cache):
    name = unique_name()
    client, version, _ = register(mlflow_store, bundle_dir, name)
    client.set_model_version_tag(name, version.version, "bundle_sha256", "0" * 64)
    with pytest.raises(BundleError, match="fails its checksum.*modified after registration"):
        fetch_bundle(f"models:/{name}@challenger", tracking_uri=mlflow_store.uri)
    with pytest.raises(BundleError, match="fails its checksum"):
        Predictor.load(f"models:/{name}/{version.version}", tracking_uri=mlflow_store.uri)
    assert not (bundle_cache / ("0" * 64)).exists()


@pytest.mark.parametrize("filename", [MANIFEST_FILE, WEIGHTS_FILE])
def test_tampered_artifact_is_refused(mlflow_store, bundle_dir, bundle_cache, filename):
    name = unique_name()
    _, _, info = register(mlflow_store, bundle_dir, name)
    stored = stored_file(mlflow_store, info.model_id, filename)
    if filename == MANIFEST_FILE:
        manifest = json.loads(stored.read_text())
        manifest["calibration"]["unknown_threshold"] = 0.0
        stored.write_text(json.dumps(manifest))
    else:
        data = bytearray(stored.read_bytes())
        data[-1] ^= 0xFF
        stored.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"fails its checksum: {filename}"):
        fetch_bundle(f"models:/{name}@challenger", tracking_uri=mlflow_store.uri)
    assert not any(bundle_cache.glob("*/" + filename)), "a tampered bundle must not enter the cache"


def test_version_without_digest_tag_is_refused(mlflow_sqlite_store, bundle_dir, bundle_cache):
    name = unique_name()
    client, version, _ = register(mlflow_sqlite_store, bundle_dir, name)
    client.delete_model_version_tag(name, version.version, "bundle_sha256")
    with pytest.raises(BundleError, match="no valid bundle_sha256 tag.*celltype register"):
        fetch_bundle(f"models:/{name}/{version.version}", tracking_uri=mlflow_sqlite_store.uri)


class _WritesMarker:
    """Unpickling this creates ``path``: proof that a pickle was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_pickles_in_the_artifact_are_never_loaded(mlflow_store, bundle_dir, bundle_cache, tmp_path):
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_WritesMarker(marker))
    evil = tmp_path / "evil"
    (evil / "artifacts" / "bundle").mkdir(parents=True)
    for filename in (MANIFEST_FILE, WEIGHTS_FILE):
        (evil / "artifacts" / "bundle" / filename).write_bytes((bundle_dir / filename).read_bytes())
    (evil / "artifacts" / "bundle" / "extra.pkl").write_bytes(payload)
    (evil / "python_model.pkl").write_bytes(payload)
    mlmodel = {
        "flavors": {
            "python_function": {"loader_module": "mlflow.pyfunc.model", "python_model": "python_model.pkl"}
        }
    }
    (evil / "MLmodel").write_text(yaml.safe_dump(mlmodel))

    name = unique_name()
    client = MlflowClient(tracking_uri=mlflow_store.uri, registry_uri=mlflow_store.uri)
    with (
        _use_tracking_uri(mlflow_store.uri),
        mlflow.start_run(experiment_id=experiment_id(client, mlflow_store)) as run,
    ):
        mlflow.log_artifacts(str(evil), "evil")
    client.create_registered_model(name)
    digest = file_sha256(bundle_dir / MANIFEST_FILE)
    version = client.create_model_version(
        name, source=f"runs:/{run.info.run_id}/evil", run_id=run.info.run_id, tags={"bundle_sha256": digest}
    )

    directory, _ = fetch_bundle(f"models:/{name}/{version.version}", tracking_uri=mlflow_store.uri)
    assert sorted(p.name for p in directory.iterdir()) == [MANIFEST_FILE, WEIGHTS_FILE]
    assert not list(bundle_cache.rglob("*.pkl"))
    assert not marker.exists()
    pickle.loads(payload)  # the payload is live: loading it would have left the marker
    assert marker.exists()


def test_unreachable_server_fails_fast_naming_the_uri(unreachable_tracking_uri):
    started = time.monotonic()
    with pytest.raises(RegistryUnavailableError, match=unreachable_tracking_uri):
        fetch_bundle("models:/pbmc@champion", tracking_uri=unreachable_tracking_uri)
    assert time.monotonic() - started < 10


def test_a_server_that_is_not_mlflow_is_reported(broken_tracking_server):
    uri = broken_tracking_server(404, 404)
    with pytest.raises(RegistryUnavailableError, match=f"{uri}/health answered HTTP 404"):
        fetch_bundle("models:/pbmc@champion", tracking_uri=uri)


@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+psycopg2", "mysql"])
def test_a_database_store_that_is_down_fails_fast(scheme, unreachable_tracking_uri):
    port = unreachable_tracking_uri.rsplit(":", 1)[1].strip("/")
    started = time.monotonic()
    with pytest.raises(RegistryUnavailableError, match=f"tracking database at 127.0.0.1:{port}"):
        fetch_bundle("models:/pbmc@champion", tracking_uri=f"{scheme}://user@127.0.0.1:{port}/mlflow")
    assert time.monotonic() - started < 10


def test_missing_sqlite_database_is_reported_not_created(tmp_path):
    uri = f"sqlite:///{tmp_path / 'nothing-here.db'}"
    with pytest.raises(RegistryUnavailableError, match="no MLflow database at"):
        fetch_bundle("models:/pbmc@champion", tracking_uri=uri)
    assert not (tmp_path / "nothing-here.db").exists()


def test_pyfunc_is_code_only_and_predicts_like_the_predictor(mlflow_sqlite_store, bundle_dir, counts):
    name = unique_name()
    _, version, info = register(mlflow_sqlite_store, bundle_dir, name)
    model_dir = stored_file(mlflow_sqlite_store, info.model_id, MANIFEST_FILE).parents[2]
    assert not list(model_dir.rglob("*.pkl")), "the logged pyfunc must hold no pickle"
    assert (
        "python_model"
        not in yaml.safe_load((model_dir / "MLmodel").read_text())["flavors"]["python_function"]
    )

    predictor = Predictor(load_bundle(bundle_dir), device="cpu")
    genes = predictor.genes[::-1] + ["NOT_A_MODEL_GENE"]
    frame = pd.DataFrame(np.c_[counts[:, ::-1], np.ones(len(counts))], columns=genes)
    with _use_tracking_uri(mlflow_sqlite_store.uri):
        pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/{version.version}")
    output = pyfunc.predict(frame)

    expected = predictor.annotate(counts)
    assert list(output.columns) == [LABEL_COLUMN, "confidence", UNKNOWN_REASON_COLUMN] + [
        probability_column(c) for c in predictor.classes
    ]
    assert list(output[LABEL_COLUMN]) == list(expected.labels)
    assert list(output[UNKNOWN_REASON_COLUMN]) == list(expected.unknown_reason)
    np.testing.assert_allclose(
        output[[probability_column(c) for c in predictor.classes]], expected.probabilities, atol=1e-6
    )
    np.testing.assert_allclose(output["confidence"], expected.confidence, atol=1e-6)

    with pytest.raises(MlflowException, match="negative values") as caught:
        pyfunc.predict(-frame)
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"


def test_predictions_frame_refuses_non_numeric_columns(bundle_dir):
    predictor = Predictor(load_bundle(bundle_dir), device="cpu")
    frame = pd.DataFrame({gene: ["3"] for gene in predictor.genes})
    with pytest.raises(InputError, match="must hold numbers"):
        predictions_frame(predictor, frame)
