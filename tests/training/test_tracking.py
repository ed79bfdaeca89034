"""Publishing training outputs to MLflow, promoting aliases and the register/promote commands.

Registration tests run against the shared SQLite store and the PostgreSQL-backed ``mlflow server``.
The ``mlflow models serve`` test needs ``uvicorn`` on PATH: it puts the venv's ``bin`` first.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests
from mlflow import MlflowClient

from model.bundle import ModelBundle, file_sha256, load_bundle, save_bundle
from model.errors import InputError
from model.predict import Predictor
from model.pyfunc import LABEL_COLUMN, probability_column
from model.registry import ModelNotFoundError, RegistryUnavailableError, fetch_bundle
from tests.conftest import MlflowStore, free_port, stop_process_group, subprocess_env, wait_until_healthy
from tests.factories import GENES, random_bundle
from training.registry_cli import add_commands
from training.tracking import (
    PUBLISHED_FILE,
    PromotionError,
    final_metrics,
    flatten_params,
    history_metrics,
    promote,
    publish,
    resolve_tracking_uri,
)

CLASSES = ["B cell", "CD4+ T", "NK"]
"""Class names with a space and a ``+``: the pyfunc's probability columns must carry them."""


def tiny_bundle(seed: int = 0) -> ModelBundle:
    """A small classifier with random weights and running statistics, bundled."""
    return random_bundle(
        GENES,
        CLASSES,
        seed=seed,
        hidden_sizes=(8,),
        metadata={
            "datasets": ["pbmc_demo"],
            "train_batches": ["lab1", "lab2"],
            "holdout_batches": ["lab3"],
            "celltype_version": "0.1.0",
        },
    )


def make_training_output(
    root: Path, *, seed: int = 0, holdout_f1: float | None = 0.8, validation_f1: float | None = 0.85
) -> Path:
    """A training output directory as `celltype train --out` writes it."""
    out = root / f"run-{seed}-{uuid.uuid4().hex[:6]}"
    save_bundle(tiny_bundle(seed), out / "bundle")
    config = {
        "model": {"hidden_sizes": [8], "norm": "batchrenorm"},
        "optim": {"lr": 0.001},
        "epochs": 2,
        "seed": seed,
    }
    (out / "config.json").write_text(json.dumps(config))
    history = [
        {
            "epoch": e,
            "step": 10 * e,
            "lr": 0.001,
            "train_loss": 1.0 / e,
            "val_loss": 1.2 / e,
            "val_macro_f1": 0.5 + 0.1 * e,
        }
        for e in (1, 2)
    ]
    (out / "history.json").write_text(json.dumps(history))
    per_class = {c: {"f1": 0.8, "precision": 0.9, "recall": 0.7, "support": 10} for c in CLASSES}
    metrics: dict = {"calibration": {"temperature": 1.3, "ece_before": 0.08, "ece_after": 0.02}}
    if validation_f1 is not None:
        metrics["validation"] = {
            "accuracy": 0.9,
            "macro_f1": validation_f1,
            "n_cells": 100,
            "per_class": per_class,
        }
    if holdout_f1 is not None:
        scores = {"accuracy": 0.88, "macro_f1": holdout_f1, "n_cells": 50, "per_class": per_class}
        metrics["holdout"] = {"overall": scores, "per_batch": {"lab3": scores}}
    (out / "metrics.json").write_text(json.dumps(metrics))
    (out / "reports").mkdir()
    (out / "reports" / "confusion.csv").write_text("true,pred,n\nNK,NK,3\n")
    (out / "data_report.json").write_text(json.dumps({"n_cells": 150}))
    return out


def unique_name() -> str:
    return f"ct-{uuid.uuid4().hex[:10]}"


def client_for(store: MlflowStore) -> MlflowClient:
    return MlflowClient(tracking_uri=store.uri, registry_uri=store.uri)


def test_resolve_tracking_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert resolve_tracking_uri(None) == "http://env:5000"
    assert resolve_tracking_uri(" http://cli:5000 ") == "http://cli:5000"


def test_params_and_metrics_are_flattened_for_mlflow():
    params = flatten_params(
        {"model": {"hidden_sizes": [8, 4], "norm": "batchrenorm"}, "lr": 0.1, "notes": "x" * 7000}
    )
    assert params["model.hidden_sizes"] == "[8, 4]" and params["model.norm"] == "batchrenorm"
    assert params["lr"] == "0.1" and len(params["notes"]) == 6000

    metrics = final_metrics({
        "validation": {"macro_f1": 0.9, "per_class": {"CD4+ T": {"f1": 0.7}}, "label": "text", "flag": True},
        "holdout": {"overall": {"macro_f1": 0.8}, "per_batch": {"lab 3": {"accuracy": 0.75}}},
        "calibration": {"temperature": 1.2, "ece_after": float("nan")},
    })  # fmt: skip
    assert metrics == {
        "validation_macro_f1": 0.9,
        "validation/per_class/CD4_ T/f1": 0.7,
        "holdout_macro_f1": 0.8,
        "holdout/per_batch/lab 3/accuracy": 0.75,
        "calibration_temperature": 1.2,
    }
    rows = history_metrics(
        [{"epoch": 1, "step": 10, "val_loss": 0.5, "note": "x"}, {"epoch": 2, "val_loss": 0.4}]
    )
    assert rows == [("val_loss", 0.5, 1), ("val_loss", 0.4, 2)]


def test_publish_registers_a_tagged_challenger_that_round_trips(mlflow_store, tmp_path, bundle_cache):
    out = make_training_output(tmp_path)
    name = unique_name()
    result = publish(
        out, tracking_uri=mlflow_store.uri, register_name=name, run_name="unit", tags={"owner": "tests"}
    )

    assert (result.registered_name, result.version, result.alias, result.reused) == (
        name,
        "1",
        "challenger",
        False,
    )
    record = json.loads((out / PUBLISHED_FILE).read_text())
    assert record["run_id"] == result.run_id and record["version_uri"] == f"models:/{name}/1"
    assert record["tracking_uri"] == mlflow_store.uri

    client = client_for(mlflow_store)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "unit"
    assert run.data.params["model.hidden_sizes"] == "[8]" and run.data.params["optim.lr"] == "0.001"
    assert run.data.metrics["holdout_macro_f1"] == 0.8 and run.data.metrics["calibration_ece_after"] == 0.02
    assert run.data.metrics["holdout/per_batch/lab3/macro_f1"] == 0.8
    assert [(m.step, m.value) for m in client.get_metric_history(result.run_id, "val_loss")] == [
        (1, 1.2),
        (2, 0.6),
    ]
    assert run.data.tags["owner"] == "tests" and run.data.tags["bundle_sha256"] == result.bundle_sha256
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {
        "bundle",
        "reports",
        "data_report.json",
        "config.json",
        "metrics.json",
        "history.json",
    } <= artifacts
    assert {a.path for a in client.list_artifacts(result.run_id, "bundle")} == {
        "bundle/manifest.json",
        "bundle/model.safetensors",
    }

    version = client.get_model_version(name, "1")
    local = load_bundle(out / "bundle")
    assert version.tags == {
        "bundle_sha256": local.sha256,
        "gene_list_hash": local.gene_list_hash,
        "dataset": "pbmc_demo",
        "batches": "lab1,lab2",
        "holdout_batches": "lab3",
        "holdout_macro_f1": "0.8",
        "holdout_accuracy": "0.88",
        "validation_macro_f1": "0.85",
        "validation_accuracy": "0.9",
        "celltype_version": "0.1.0",
    }
    assert client.get_model_version_by_alias(name, "challenger").version in ("1", 1)

    directory, info = fetch_bundle(f"models:/{name}@challenger", tracking_uri=mlflow_store.uri)
    assert sorted(p.name for p in directory.iterdir()) == ["manifest.json", "model.safetensors"]
    assert (info["version"], info["run_id"], info["gene_list_hash"]) == (
        "1",
        result.run_id,
        local.gene_list_hash,
    )

    counts = np.random.default_rng(3).poisson(4.0, size=(30, len(GENES))).astype(np.float32)
    expected = Predictor(local, device="cpu").predict_proba(counts)
    for uri in (f"models:/{name}@challenger", f"models:/{name}/1"):
        loaded = Predictor.load(uri, tracking_uri=mlflow_store.uri, device="cpu")
        np.testing.assert_array_equal(loaded.predict_proba(counts), expected)
        assert loaded.source["run_id"] == result.run_id


def test_publishing_again_reuses_the_version_and_new_outputs_become_challenger(mlflow_sqlite_store, tmp_path):
    uri, name = mlflow_sqlite_store.uri, unique_name()
    first_out = make_training_output(tmp_path, seed=1)
    first = publish(first_out, tracking_uri=uri, register_name=name)
    again = publish(first_out, tracking_uri=uri, register_name=name)
    assert again.reused and (again.run_id, again.version) == (first.run_id, first.version)

    second = publish(make_training_output(tmp_path, seed=2), tracking_uri=uri, register_name=name)
    assert second.version == "2" and not second.reused
    client = client_for(mlflow_sqlite_store)
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "2"
    assert len(client.search_model_versions(f"name = '{name}'")) == 2

    unregistered = publish(make_training_output(tmp_path, seed=3), tracking_uri=uri)
    assert unregistered.version is None and unregistered.alias is None and client.get_run(unregistered.run_id)


def test_incomplete_output_directory_is_refused_before_contacting_the_store(
    tmp_path, unreachable_tracking_uri
):
    out = make_training_output(tmp_path)
    (out / "metrics.json").unlink()
    with pytest.raises(InputError, match="metrics.json .* is missing"):
        publish(out, tracking_uri=unreachable_tracking_uri, register_name="pbmc")
    with pytest.raises(InputError, match="invalid model name"):
        publish(make_training_output(tmp_path), tracking_uri=unreachable_tracking_uri, register_name="../x")


def test_unreachable_server_fails_fast_and_says_how_to_register_later(tmp_path, unreachable_tracking_uri):
    out = make_training_output(tmp_path)
    before = {p.name: file_sha256(p) for p in (out / "bundle").iterdir()}
    started = time.monotonic()
    with pytest.raises(RegistryUnavailableError) as caught:
        publish(out, tracking_uri=unreachable_tracking_uri, register_name="pbmc")
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert f"safe at {out / 'bundle'}" in message
    assert f"celltype register {out} --register pbmc --tracking-uri {unreachable_tracking_uri}" in message
    assert {p.name: file_sha256(p) for p in (out / "bundle").iterdir()} == before
    assert not (out / PUBLISHED_FILE).exists()


def test_server_failing_mid_way_fails_fast_with_the_same_advice(tmp_path, broken_tracking_server):
    uri = broken_tracking_server(200, 503)
    out = make_training_output(tmp_path)
    started = time.monotonic()
    with pytest.raises(
        RegistryUnavailableError, match=f"unreachable or failing.*celltype register .* --tracking-uri {uri}"
    ):
        publish(out, tracking_uri=uri, register_name="pbmc")
    assert time.monotonic() - started < 20
    assert not (out / PUBLISHED_FILE).exists()


def test_promote_moves_champion_only_when_better(mlflow_store, tmp_path):
    uri, name = mlflow_store.uri, unique_name()
    publish(make_training_output(tmp_path, seed=1, holdout_f1=0.80), tracking_uri=uri, register_name=name)
    publish(make_training_output(tmp_path, seed=2, holdout_f1=0.90), tracking_uri=uri, register_name=name)

    first = promote(name, "1", tracking_uri=uri, if_better=True)
    assert first.moved and first.previous_version is None and "was not set before" in first.reason
    better = promote(name, "2", tracking_uri=uri, if_better=True)
    assert better.moved and better.previous_version == "1"
    assert (better.metric, better.candidate_score, better.incumbent_score) == ("holdout_macro_f1", 0.9, 0.8)
    assert "holdout_macro_f1 0.9000 > 0.8000" in better.reason
    worse = promote(name, "1", tracking_uri=uri, if_better=True)
    assert (
        not worse.moved and "stays on version 2" in worse.reason and "not better than 0.9000" in worse.reason
    )
    assert str(client_for(mlflow_store).get_model_version_by_alias(name, "champion").version) == "2"
    assert "already points to version 2" in promote(name, "2", tracking_uri=uri).reason

    forced = promote(name, "1", tracking_uri=uri)
    assert forced.moved and forced.previous_version == "2"
    with pytest.raises(ModelNotFoundError, match="has no version 9 .*its versions: 1, 2"):
        promote(name, "9", tracking_uri=uri)


def test_if_better_falls_back_to_validation_only_when_both_lack_holdout(mlflow_sqlite_store, tmp_path):
    uri, name = mlflow_sqlite_store.uri, unique_name()
    for seed, validation in ((1, 0.7), (2, 0.75)):
        publish(
            make_training_output(tmp_path, seed=seed, holdout_f1=None, validation_f1=validation),
            tracking_uri=uri,
            register_name=name,
        )
    promote(name, "1", tracking_uri=uri)
    result = promote(name, "2", tracking_uri=uri, if_better=True)
    assert result.moved and result.metric == "validation_macro_f1"
    assert "neither version has a holdout_macro_f1 tag, so validation_macro_f1 was compared" in result.reason

    publish(make_training_output(tmp_path, seed=3, holdout_f1=0.99), tracking_uri=uri, register_name=name)
    with pytest.raises(
        PromotionError,
        match=r"version 2 has no holdout_macro_f1 tag.*--metric \(tags both carry: validation_accuracy, validation_macro_f1\)",
    ):
        promote(name, "3", tracking_uri=uri, if_better=True)
    assert promote(name, "3", tracking_uri=uri, if_better=True, metric="validation_macro_f1").moved


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="celltype")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_register_and_promote_commands(mlflow_sqlite_store, tmp_path, capsys, unreachable_tracking_uri):
    uri, name, out = mlflow_sqlite_store.uri, unique_name(), make_training_output(tmp_path)
    args = parse(["register", str(out), "--register", name, "--tracking-uri", uri])
    assert args.handler(args) == 0
    printed = capsys.readouterr().out
    assert f"registered {name} version 1 (alias challenger)" in printed
    assert f"celltype promote {name} --version 1 --if-better" in printed
    assert args.handler(args) == 0 and "nothing changed" in capsys.readouterr().out

    args = parse(["promote", name, "--version", "1", "--if-better", "--tracking-uri", uri])
    assert args.handler(args) == 0
    assert capsys.readouterr().out.startswith(f"promoted: {name}@champion now points to version 1")
    assert args.alias == "champion" and args.metric == "holdout_macro_f1"

    args = parse(
        [
            "register",
            str(make_training_output(tmp_path)),
            "--register",
            name,
            "--tracking-uri",
            unreachable_tracking_uri,
        ]
    )
    with pytest.raises(RegistryUnavailableError, match="celltype register"):
        args.handler(args)


@pytest.mark.slow
@pytest.mark.integration
def test_mlflow_models_serve_answers_like_the_predictor(mlflow_sqlite_store, tmp_path):
    """``mlflow models serve`` (a peer server, needs ``uvicorn`` on PATH) gives the Predictor's answers."""
    out = make_training_output(tmp_path)
    name = unique_name()
    publish(out, tracking_uri=mlflow_sqlite_store.uri, register_name=name)
    port, log = free_port(), tmp_path / "serve.log"
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{name}@challenger", "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port), "-w", "1"]  # fmt: skip
    env = subprocess_env(MLFLOW_TRACKING_URI=mlflow_sqlite_store.uri)
    with open(log, "wb") as stream:
        process = subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}/ping", process, log, timeout_s=180)
        counts = np.random.default_rng(5).poisson(4.0, size=(20, len(GENES))).astype(np.float64)
        columns = GENES[::-1] + ["EXTRA"]
        data = np.c_[counts[:, ::-1], np.ones(len(counts))]
        body = {"dataframe_split": {"columns": columns, "data": data.tolist()}}
        response = requests.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=60)
        assert response.status_code == 200, response.text
        rows = response.json()["predictions"]

        expected = Predictor(load_bundle(out / "bundle"), device="cpu").annotate(counts)
        assert [row[LABEL_COLUMN] for row in rows] == list(expected.labels)
        served = np.array([[row[probability_column(c)] for c in CLASSES] for row in rows])
        np.testing.assert_allclose(served, expected.probabilities, atol=1e-6)

        bad = {"dataframe_split": {"columns": columns, "data": (-data).tolist()}}
        refused = requests.post(f"http://127.0.0.1:{port}/invocations", json=bad, timeout=60)
        assert refused.status_code == 400 and "negative values" in refused.text
    finally:
        stop_process_group(process)
