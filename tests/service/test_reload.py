"""POST /v1/admin/reload and periodic re-resolution: atomic swaps, refusals, the old model keeps serving."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.tracking._tracking_service.utils import _use_tracking_uri

from model.bundle import WEIGHTS_FILE, load_bundle, save_bundle
from model.predict import Predictor
from model.pyfunc import log_pyfunc

from .conftest import CLASSES, assert_client_error, make_bundle, predict_body, random_counts
from .test_observability import samples

CELLS = random_counts(5, seed=11)


def probabilities(client) -> np.ndarray:
    response = client.post("/v1/predict", json=predict_body(CELLS, return_probabilities=True))
    assert response.status_code == 200, response.text
    return np.array([[p["probabilities"][c] for c in CLASSES] for p in response.json()["predictions"]])


def served_digest(client) -> str:
    return client.get("/v1/model").json()["bundle_sha256"]


def wait_for(condition, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


@pytest.fixture
def own_bundle(tmp_path: Path, seed: int) -> Path:
    path = tmp_path / "served"
    save_bundle(make_bundle(seed=seed), path)
    return path


def test_reload_swaps_in_the_new_bundle(make_client, own_bundle, seed):
    client = make_client(model_uri=str(own_bundle))
    old_digest, old = served_digest(client), probabilities(client)
    assert client.post("/v1/admin/reload").json()["status"] == "unchanged"
    new_digest = save_bundle(make_bundle(seed=seed + 1), own_bundle)
    response = client.post("/v1/admin/reload")
    assert response.status_code == 200, response.text
    outcome = response.json()
    assert outcome["status"] == "reloaded"
    assert outcome["previous"]["bundle_sha256"] == old_digest and outcome["current"]["bundle_sha256"] == new_digest
    assert served_digest(client) == new_digest
    expected = Predictor.load(own_bundle, device="cpu").predict_proba(CELLS)
    np.testing.assert_allclose(probabilities(client), expected, atol=1e-6)
    assert not np.allclose(old, expected)
    values = samples(client)
    info = {dict(labels)["bundle_sha256"]: value for (name, labels), value in values.items() if name == "celltype_model_info"}
    assert info == {old_digest: 0.0, new_digest: 1.0}
    assert values["celltype_model_reloads_total", (("result", "reloaded"),)] == 1
    assert values["celltype_model_reloads_total", (("result", "unchanged"),)] == 1


def test_a_tampered_bundle_is_refused_and_the_old_model_keeps_serving(make_client, own_bundle, seed):
    client = make_client(model_uri=str(own_bundle))
    old_digest, old = served_digest(client), probabilities(client)
    save_bundle(make_bundle(seed=seed + 1), own_bundle)
    weights = own_bundle / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert_client_error(client.post("/v1/admin/reload"), 409, "fails its checksum", "keeps serving")
    assert served_digest(client) == old_digest
    np.testing.assert_array_equal(probabilities(client), old)
    assert samples(client)["celltype_model_reloads_total", (("result", "refused"),)] == 1


def test_a_missing_bundle_is_refused(make_client, own_bundle, tmp_path):
    client = make_client(model_uri=str(own_bundle))
    old_digest = served_digest(client)
    own_bundle.rename(tmp_path / "moved")
    assert_client_error(client.post("/v1/admin/reload"), 409, "not a directory")
    assert served_digest(client) == old_digest


def test_an_unreachable_source_is_502(make_client, own_bundle, predictor):
    def loader(uri: str) -> Predictor:
        raise ConnectionError("registry down")

    client = make_client(model_uri=str(own_bundle), predictor=predictor, loader=loader)
    assert_client_error(client.post("/v1/admin/reload"), 502, "registry down", "keeps serving")
    assert served_digest(client) == predictor.bundle.sha256


def test_one_reload_at_a_time(make_client, own_bundle, predictor):
    entered, release = threading.Event(), threading.Event()

    def slow_loader(uri: str) -> Predictor:
        entered.set()
        release.wait(timeout=30)
        return Predictor.load(uri, device="cpu")

    client = make_client(model_uri=str(own_bundle), predictor=predictor, loader=slow_loader)
    first: list[int] = []
    thread = threading.Thread(target=lambda: first.append(client.post("/v1/admin/reload").status_code))
    thread.start()
    try:
        assert entered.wait(timeout=30)
        assert_client_error(client.post("/v1/admin/reload"), 409, "already running")
        assert client.post("/v1/predict", json=predict_body(CELLS)).status_code == 200
    finally:
        release.set()
        thread.join(timeout=30)
    assert first == [200]


def test_requests_in_flight_finish_on_the_model_they_started_with(make_client, own_bundle, blocking_predictor, tmp_path, seed):
    old_digest = save_bundle(blocking_predictor.bundle, tmp_path / "blocking")
    client = make_client(model_uri=str(own_bundle), predictor=blocking_predictor)
    results: list[dict] = []
    thread = threading.Thread(target=lambda: results.append(client.post("/v1/predict", json=predict_body(CELLS)).json()))
    thread.start()
    assert blocking_predictor.entered.wait(timeout=30)
    new_digest = save_bundle(make_bundle(seed=seed + 1), own_bundle)
    assert client.post("/v1/admin/reload").json()["current"]["bundle_sha256"] == new_digest
    assert client.post("/v1/predict", json=predict_body(CELLS)).json()["model"]["bundle_sha256"] == new_digest
    blocking_predictor.release.set()
    thread.join(timeout=30)
    assert results[0]["model"]["bundle_sha256"] == old_digest


def test_periodic_reload_picks_up_a_new_version(make_client, own_bundle, seed):
    client = make_client(model_uri=str(own_bundle), reload_interval_s=0.1)
    new_digest = save_bundle(make_bundle(seed=seed + 1), own_bundle)
    wait_for(lambda: served_digest(client) == new_digest)


# --------------------------------------------------------------------------------------------------
# Through the MLflow registry (models:/NAME@champion)
# --------------------------------------------------------------------------------------------------


def register(store, bundle_dir: Path, name: str, *, digest_tag: str | None = None) -> str:
    """Log ``bundle_dir`` as the pyfunc, register it under ``name`` and point ``champion`` at it."""
    client = MlflowClient(tracking_uri=store.uri, registry_uri=store.uri)
    digest = load_bundle(bundle_dir).sha256
    experiment = client.get_experiment_by_name("service-tests")
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else client.create_experiment("service-tests", artifact_location=store.artifacts_dir.as_uri())
    )
    with _use_tracking_uri(store.uri):
        with mlflow.start_run(experiment_id=experiment_id) as run:
            info = log_pyfunc(bundle_dir)
        if not client.search_registered_models(f"name = '{name}'"):
            client.create_registered_model(name)
        version = client.create_model_version(
            name,
            source=info.model_uri,
            run_id=run.info.run_id,
            model_id=info.model_id,
            tags={"bundle_sha256": digest_tag or digest},
        )
    client.set_registered_model_alias(name, "champion", version.version)
    return version.version


@pytest.mark.slow
def test_reload_follows_the_champion_alias_and_refuses_a_bad_version(
    make_client, mlflow_sqlite_store, bundle_cache, tmp_path
):
    name = f"svc-{tmp_path.name[-12:]}".replace("_", "-")
    bundles = []
    for seed in (5, 6, 7):
        path = tmp_path / f"bundle{seed}"
        save_bundle(make_bundle(seed=seed), path)
        bundles.append(path)
    register(mlflow_sqlite_store, bundles[0], name)
    client = make_client(model_uri=f"models:/{name}@champion", tracking_uri=mlflow_sqlite_store.uri)
    described = client.get("/v1/model").json()
    assert (described["name"], described["version"], described["alias"]) == (name, "1", "champion")
    assert described["run_id"] and "tracking_uri" not in described

    register(mlflow_sqlite_store, bundles[1], name)
    outcome = client.post("/v1/admin/reload").json()
    assert (outcome["status"], outcome["previous"]["version"], outcome["current"]["version"]) == ("reloaded", "1", "2")
    expected = Predictor.load(bundles[1], device="cpu").predict_proba(CELLS)
    np.testing.assert_allclose(probabilities(client), expected, atol=1e-6)

    register(mlflow_sqlite_store, bundles[2], name, digest_tag="0" * 64)
    assert_client_error(client.post("/v1/admin/reload"), 409, "fails its checksum", "keeps serving")
    assert client.get("/v1/model").json()["version"] == "2"
    np.testing.assert_allclose(probabilities(client), expected, atol=1e-6)
