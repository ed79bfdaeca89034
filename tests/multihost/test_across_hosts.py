"""Training and scoring across two "hosts": network namespaces joined by a veth pair (see benchmarks/multihost.py).

- torchrun with one node in each namespace (c10d rendezvous on the first one's veth address, gloo over
  the veth) trains the model one process trains on the same global mini-batches;
- a Dask scheduler in one namespace and a worker in the other score a file exactly as one process does.

Everything goes through the public entry points (``python -m training.distributed``, ``python -m cli``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks.multihost import NamespacePair, wait_for_line
from model.bundle import load_bundle
from model.predict import Predictor

from .conftest import REPO, node_env

pytestmark = pytest.mark.slow

TRAIN_OPTIONS = [
    "--device", "cpu", "--no-progress", "--set", "epochs=2", "--set", "hidden_sizes=32,16",
    "--set", "validation_fraction=0", "--set", "dropout=0", "--set", "weight_averaging=false",
    "--set", "sampler=shuffled",
]  # fmt: skip
"""Like tests/training/test_distributed.py: the shuffled sampler deals one process's global mini-batches to
the ranks, and weights are compared raw (not their running average)."""
BATCH_PER_RANK = 16
RENDEZVOUS_PORT = 29400
SCHEDULER_PORT = 8786
NODE_TIMEOUT_S = 300
SCORE_OPTIONS = ["--device", "cpu", "--no-progress", "--chunk-size", "100"]


def log_tail(path: Path) -> str:
    """The end of a log file, for failure messages."""
    return path.read_text(errors="replace")[-4000:] if path.exists() else f"({path} not written)"


def run_checked(command: list[str], timeout_s: float = NODE_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run ``command`` here (the root namespace) from the repository; fail the test if it fails."""
    done = subprocess.run(command, cwd=REPO, env=node_env(), capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, f"{command[:5]} exited with {done.returncode}:\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def one_process_run(labeled_h5ad: Path, mlflow_sqlite_store, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``celltype train`` in one process with the global mini-batch of two ranks; its output directory."""
    out = tmp_path_factory.mktemp("one-process") / "run"
    run_checked([
        sys.executable, "-m", "cli", "train", str(labeled_h5ad), "--out", str(out),
        "--tracking-uri", mlflow_sqlite_store.uri, *TRAIN_OPTIONS, "--set", f"batch_size={2 * BATCH_PER_RANK}",
    ])  # fmt: skip
    return out


def start_torchrun_node(
    hosts: NamespacePair, index: int, data: Path, out: Path, tracking_uri: str, log: Path
) -> subprocess.Popen:
    """torchrun for node ``index`` (0: hosts.first, which hosts the rendezvous store; 1: hosts.second)."""
    host = (hosts.first, hosts.second)[index]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{hosts.first.address}:{RENDEZVOUS_PORT}",
        "--rdzv-id", f"celltype-{os.getpid()}", "--rdzv-conf", f"is_host={index == 0},join_timeout=120",
        "--local-addr", host.address,
        "-m", "training.distributed", str(data), "--out", str(out), "--dist-norm", "sync",
        "--tracking-uri", tracking_uri, *TRAIN_OPTIONS, "--set", f"batch_size={BATCH_PER_RANK}",
    ]  # fmt: skip
    return hosts.start(host, command, log, env=node_env(GLOO_SOCKET_IFNAME=host.device), cwd=REPO)


def test_torchrun_with_a_node_on_each_host_trains_the_one_process_model(
    hosts: NamespacePair, labeled_h5ad: Path, one_process_run: Path, mlflow_sqlite_store, tmp_path: Path
) -> None:
    out = tmp_path / "two-hosts"
    logs = [tmp_path / f"node{index}.log" for index in range(2)]
    nodes = [
        start_torchrun_node(hosts, index, labeled_h5ad, out, mlflow_sqlite_store.uri, logs[index])
        for index in range(2)
    ]
    for node, log in zip(nodes, logs, strict=True):
        try:
            node.wait(timeout=NODE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"torchrun node did not finish in {NODE_TIMEOUT_S} s:\n{log_tail(log)}")
        assert node.returncode == 0, log_tail(log)

    distributed = load_bundle(out / "bundle")
    facts = json.loads((out / "metrics.json").read_text())["distributed"]
    assert facts == {**facts, "world_size": 2, "backend": "gloo", "norm_mode": "sync", "global_batch_size": 32}
    assert facts["max_replica_difference"] == 0.0

    single = load_bundle(one_process_run / "bundle")
    assert (single.genes, single.classes) == (distributed.genes, distributed.classes)
    assert single.state_dict.keys() == distributed.state_dict.keys()
    # Tolerances of tests/training/test_distributed.py (reasons there): Adam turns the float noise of
    # near-zero gradients into lr-sized steps, so raw weights agree loosely and the function closely.
    for key, value in single.state_dict.items():
        torch.testing.assert_close(distributed.state_dict[key], value, atol=2e-2, rtol=2e-2, msg=key)
    adata = ad.read_h5ad(labeled_h5ad)
    genes = [str(g) for g in adata.var_names]
    ours = Predictor.load(out / "bundle", device="cpu").predict_proba(adata.X, genes)
    reference = Predictor.load(one_process_run / "bundle", device="cpu").predict_proba(adata.X, genes)
    assert float(np.abs(ours - reference).max()) < 5e-2
    assert float((ours.argmax(1) == reference.argmax(1)).mean()) >= 0.99


def test_dask_scheduler_and_worker_on_different_hosts_score_like_one_process(
    hosts: NamespacePair, labeled_h5ad: Path, one_process_run: Path, tmp_path: Path
) -> None:
    bundle = one_process_run / "bundle"
    address = f"tcp://{hosts.first.address}:{SCHEDULER_PORT}"
    scheduler_log, worker_log = tmp_path / "scheduler.log", tmp_path / "worker.log"
    scheduler = hosts.start(
        hosts.first,
        [sys.executable, "-m", "dask", "scheduler", "--host", hosts.first.address, "--port", str(SCHEDULER_PORT),
         "--no-dashboard"],
        scheduler_log, env=node_env(), cwd=REPO,
    )  # the worker keeps trying to connect until the scheduler is up
    worker = hosts.start(
        hosts.second,
        [sys.executable, "-m", "dask", "worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard"],
        worker_log, env=node_env(), cwd=REPO,
    )
    local = tmp_path / "one-process.parquet"  # meanwhile, the reference
    run_checked([sys.executable, "-m", "cli", "score", str(labeled_h5ad), "--model", str(bundle), "--out", str(local),
                 *SCORE_OPTIONS])
    wait_for_line(scheduler_log, "Scheduler at:", scheduler, 120)
    wait_for_line(worker_log, "Registered to:", worker, 120)
    assert f"tcp://{hosts.second.address}:" in worker_log.read_text()  # the worker lives on the second host

    on_dask = tmp_path / "two-hosts.parquet"
    done = hosts.run(
        hosts.first,
        [sys.executable, "-m", "cli", "score", str(labeled_h5ad), "--model", str(bundle), "--out", str(on_dask),
         *SCORE_OPTIONS, "--scheduler", address],
        env=node_env(), cwd=REPO, timeout_s=NODE_TIMEOUT_S,
    )
    assert done.returncode == 0, f"{done.stderr[-3000:]}\nworker:\n{log_tail(worker_log)}"
    scored = pd.read_parquet(on_dask)
    assert len(scored) == 600
    pd.testing.assert_frame_equal(scored, pd.read_parquet(local), check_exact=True)
