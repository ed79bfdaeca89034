"""The whole path on the local stack of ``scripts/stack.sh`` (PostgreSQL, ``mlflow server``, trainer, service):
train -> register -> promote -> serve -> predict -> train and register a new version -> promote ->
``/v1/admin/reload`` -> predictions come from the new version -> ``celltype score`` a file with it."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anndata
import httpx
import numpy as np
import pandas as pd
import pytest

from benchmarks.reliability.harness import child_env, run_celltype
from benchmarks.reliability.inputs import bundled_data
from benchmarks.reliability.stores import postgres_connection

ROOT = Path(__file__).resolve().parents[1]
STACK = ROOT / "scripts" / "stack.sh"
TRAIN_SETS = ("epochs=2", "n_top_genes=300", "hidden_sizes=64,32")
HOLDOUT = "sc_dropseq"

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def stack_command(command: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``scripts/stack.sh COMMAND``."""
    return subprocess.run(
        ["bash", str(STACK), command], env=env, cwd=ROOT, capture_output=True, text=True, timeout=900
    )


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """``scripts/stack.sh up`` in a temporary state directory on a throw-away database; ``down`` afterwards."""
    connection = postgres_connection()
    if connection is None:
        reason = "PostgreSQL is not reachable on 127.0.0.1:5432 (start it with scripts/ensure_postgres.sh)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    connection.close()
    env = child_env(
        STACK_DIR=str(tmp_path / "stack"),
        STACK_DB=f"celltype_e2e_{secrets.token_hex(4)}",
        MODEL_NAME="e2e-model",
        TRAIN_ARGS=" ".join(f"--set {assignment}" for assignment in TRAIN_SETS),
        CELLTYPE_API_KEY=secrets.token_urlsafe(16),
        BIN=str(Path(sys.executable).parent),
    )
    up = stack_command("up", env)
    try:
        assert up.returncode == 0, f"stack.sh up failed:\n{up.stderr[-4000:]}"
        state = dict(
            line.split("=", 1) for line in (tmp_path / "stack" / "stack.env").read_text().splitlines()
        )
        yield {**state, "API_KEY": env["CELLTYPE_API_KEY"], "env": env}
    finally:
        down = stack_command("down", env)
        assert down.returncode == 0, down.stderr[-4000:]
        status = stack_command("status", env)
        assert status.returncode != 0 and "mlflow: down" in status.stdout and "service: down" in status.stdout


def holdout_cells(n_cells: int) -> tuple[list[str], list[str], np.ndarray, list[str]]:
    """The first ``n_cells`` of the held-out lab: cell ids, genes, counts, true cell types."""
    adata = anndata.read_h5ad(bundled_data())
    cells = adata[adata.obs["batch"] == HOLDOUT][:n_cells]
    counts = cells.X.toarray() if hasattr(cells.X, "toarray") else np.asarray(cells.X)
    return list(cells.obs_names), list(cells.var_names), counts, list(cells.obs["cell_type"].astype(str))


def predict(service_url: str, key: str, genes: list[str], counts: np.ndarray, cell_ids: list[str]) -> dict:
    """``POST /v1/predict`` with the API key."""
    answer = httpx.post(
        f"{service_url}/v1/predict",
        json={"genes": genes, "cells": counts.tolist(), "cell_ids": cell_ids},
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_train_register_promote_serve_reload_and_score(stack: dict[str, Any], tmp_path: Path) -> None:
    """Version 1 serves after ``up``; a second version, promoted and reloaded, answers next, and batch
    scoring with the champion gives the same labels as the service."""
    url, key, uri, name = (
        stack["SERVICE_URL"],
        stack["API_KEY"],
        stack["MLFLOW_TRACKING_URI"],
        stack["MODEL_NAME"],
    )
    cell_ids, genes, counts, truth = holdout_cells(40)

    first = predict(url, key, genes, counts, cell_ids)
    assert first["model"]["version"] == stack["CHAMPION_VERSION"] == "1"
    labels = [p["label"] for p in first["predictions"]]
    assert np.mean(np.asarray(labels) == np.asarray(truth)) >= 0.7, list(zip(labels, truth, strict=True))

    out = tmp_path / "v2"
    overrides = [arg for assignment in TRAIN_SETS for arg in ("--set", assignment)]
    trained = run_celltype(
        ["train", str(bundled_data()), "--holdout-batch", HOLDOUT, "--out", str(out), "--register", name,
         "--tracking-uri", uri, "--seed", "1", "--no-progress", *overrides],
        env=stack["env"],
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert f"registered {name} version 2" in trained.stdout
    promoted = run_celltype(["promote", name, "--version", "2", "--tracking-uri", uri], env=stack["env"])
    assert promoted.returncode == 0 and "promoted" in promoted.stdout, promoted.stderr

    reload = httpx.post(f"{url}/v1/admin/reload", headers={"X-API-Key": key}, timeout=120)
    assert reload.status_code == 200, reload.text
    assert reload.json()["status"] == "reloaded"
    assert reload.json()["current"]["version"] == "2"
    second = predict(url, key, genes, counts, cell_ids)
    assert second["model"]["version"] == "2"
    assert second["model"]["bundle_sha256"] != first["model"]["bundle_sha256"]

    scored_path = tmp_path / "scored.csv"
    scored = run_celltype(
        ["score", str(bundled_data()), "--model", f"models:/{name}@champion", "--tracking-uri", uri,
         "--out", str(scored_path), "--no-progress"],
        env={**stack["env"], "CELLTYPE_CACHE_DIR": str(tmp_path / "score-cache")},
    )  # fmt: skip
    assert scored.returncode == 0, scored.stderr[-3000:]
    table = pd.read_csv(scored_path).set_index("cell_id")
    assert len(table) == anndata.read_h5ad(bundled_data(), backed="r").n_obs
    from_service = {p["cell_id"]: p["label"] for p in second["predictions"]}
    assert table.loc[cell_ids, "predicted_cell_type"].tolist() == [from_service[c] for c in cell_ids]
