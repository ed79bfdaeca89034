"""The shell scripts of docker-compose.yml's one-shot containers, run here: no Docker engine is needed to
check that the trainer trains, registers and promotes ``champion`` and that the scorer scores with it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from benchmarks.reliability.harness import child_env
from model.registry import fetch_bundle
from tests.conftest import MlflowStore

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml as parsed YAML."""
    return yaml.safe_load(COMPOSE.read_text())


@pytest.mark.slow
def test_the_compose_trainer_and_scorer_scripts_train_promote_and_score(
    compose: dict[str, Any], mlflow_sqlite_store: MlflowStore, bundle_cache: Path, tmp_path: Path
) -> None:
    """The trainer container's script (train, register, promote ``--if-better``) and the scorer's, run here
    with ``celltype`` on PATH and the container paths mapped into a temporary directory."""
    shim = tmp_path / "bin" / "celltype"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m cli "$@"\n')
    shim.chmod(0o755)
    env = child_env(
        PATH=f"{shim.parent}:{child_env()['PATH']}",
        MLFLOW_TRACKING_URI=mlflow_sqlite_store.uri,
        MODEL_NAME="compose-scripts",
        TRAIN_DATA="",
        TRAIN_LABEL_KEY="cell_type",
        TRAIN_BATCH_KEY="batch",
        TRAIN_HOLDOUT_BATCH="sc_dropseq",
        TRAIN_ARGS="--set epochs=2 --set n_top_genes=300 --set hidden_sizes=32,16",
        SCORE_INPUT="",
        SCORE_OUTPUT="scored.parquet",
        SCORE_ARGS="--chunk-size 500",
        CELLTYPE_CACHE_DIR=str(bundle_cache),
    )
    for name, mount in (("trainer", "/outputs"), ("scorer", "/scores")):
        (tmp_path / mount.strip("/")).mkdir()
        script = (
            compose["services"][name]["command"][0]
            .replace("$$", "$")
            .replace(mount, str(tmp_path / mount.strip("/")))
        )
        ran = subprocess.run(
            ["sh", "-ec", script], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=600
        )
        assert ran.returncode == 0, f"{name}:\n{ran.stdout[-2000:]}\n{ran.stderr[-3000:]}"

    _, champion = fetch_bundle("models:/compose-scripts@champion", tracking_uri=mlflow_sqlite_store.uri)
    assert champion["version"] == "1"
    scored = pd.read_parquet(tmp_path / "scores" / "scored.parquet")
    assert len(scored) == 1408 and {"predicted_cell_type", "confidence"} <= set(scored.columns)
