"""Data-parallel training over NCCL with one process (torchrun): the launch path a GPU cluster uses."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from model.bundle import load_bundle

from .conftest import CUDA_ONLY, REPO, command_env

pytestmark = CUDA_ONLY


def test_one_nccl_rank_trains_and_writes_one_bundle(labeled_h5ad, tmp_path, mlflow_sqlite_store) -> None:
    out = tmp_path / "nccl"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
        "-m", "training.distributed", str(labeled_h5ad), "--out", str(out), "--device", "cuda",
        "--tracking-uri", mlflow_sqlite_store.uri, "--no-progress", "--dist-norm", "sync",
        "--set", "epochs=3", "--set", "hidden_sizes=64,32",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=command_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "1 ranks (nccl)" in done.stdout
    facts = load_bundle(out / "bundle").metadata["distributed"]
    assert facts == {**facts, "world_size": 1, "backend": "nccl", "norm_mode": "sync", "max_replica_difference": 0.0}
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 3 and np.isfinite([r["train_loss"] for r in history]).all()
    assert (out / "published.json").is_file()
