"""Training under faults: SIGKILL mid-run then ``--resume``; the MLflow server unreachable when publishing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from benchmarks.reliability.harness import free_port, run_celltype
from benchmarks.reliability.training_faults import kill_training_and_resume, train_args
from model.bundle import load_bundle
from model.registry import fetch_bundle
from tests.conftest import MlflowStore

SETS = ("epochs=4", "patience=0", "n_top_genes=300", "hidden_sizes=64,32")
"""Small enough for seconds per run; four epochs leave three to interrupt."""
MODEL_NAME = "reliability-outage"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dead_tracking_uri() -> str:
    """An MLflow tracking URI where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def uninterrupted(
    tmp_path_factory: pytest.TempPathFactory, dead_tracking_uri: str
) -> tuple[Path, subprocess.CompletedProcess]:
    """One complete ``celltype train --register`` run whose tracking server is unreachable."""
    out = tmp_path_factory.mktemp("training-faults") / "uninterrupted"
    finished = run_celltype(train_args(out, dead_tracking_uri, SETS, "--register", MODEL_NAME))
    return out, finished


def test_registry_down_keeps_the_bundle_exits_3_and_register_works_later(
    uninterrupted: tuple[Path, subprocess.CompletedProcess],
    mlflow_sqlite_store: MlflowStore,
    bundle_cache: Path,
) -> None:
    """Exit code 3 (trained, not published) with a message naming the bundle and the command to publish it;
    ``celltype register`` publishes that very bundle once a registry is reachable."""
    out, finished = uninterrupted

    assert finished.returncode == 3, finished.stderr[-3000:]
    assert "cannot reach the MLflow tracking server" in finished.stderr
    assert f"celltype register {out.resolve()} --register {MODEL_NAME}" in finished.stderr
    assert "Traceback" not in finished.stderr
    trained = load_bundle(out / "bundle")

    registered = run_celltype(
        ["register", str(out), "--register", MODEL_NAME, "--tracking-uri", mlflow_sqlite_store.uri]
    )

    assert registered.returncode == 0, registered.stderr[-3000:]
    _, info = fetch_bundle(f"models:/{MODEL_NAME}@challenger", tracking_uri=mlflow_sqlite_store.uri)
    assert info["bundle_sha256"] == trained.sha256


def test_sigkill_after_the_first_checkpoint_then_resume_gives_identical_weights(
    uninterrupted: tuple[Path, subprocess.CompletedProcess], dead_tracking_uri: str, tmp_path: Path
) -> None:
    """The run killed right after epoch 1 and resumed ends with bit-identical tensors, history and metrics."""
    reference, _ = uninterrupted

    outcome = kill_training_and_resume(
        tmp_path, tracking_uri=dead_tracking_uri, sets=SETS, reference=reference
    )

    assert outcome.passed, outcome.detail
    assert outcome.numbers["epochs_done_at_kill"] < outcome.numbers["epochs"]
    assert outcome.numbers["tensors_differing"] == 0
