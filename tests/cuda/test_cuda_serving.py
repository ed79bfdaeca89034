"""``celltype serve`` with ``CELLTYPE_DEVICE=cuda`` answers as the model does on CPU."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import anndata as ad
import httpx
import numpy as np
import pytest

from model.predict import Predictor

from .conftest import CUDA_ONLY, REPO, command_env

pytestmark = CUDA_ONLY


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cuda_service_predicts_like_the_cpu_model(labeled_h5ad, random_bundle_dir, tmp_path) -> None:
    port, log = free_port(), tmp_path / "serve.log"
    command = [sys.executable, "-m", "cli", "serve", "--model", str(random_bundle_dir), "--port", str(port)]
    env = command_env(CELLTYPE_DEVICE="cuda")  # "cuda" makes a missing GPU an error, not a silent CPU fallback
    with open(log, "wb") as stream:
        server = subprocess.Popen(command, cwd=REPO, env=env, stdout=stream, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"service not ready in 120 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        adata = ad.read_h5ad(labeled_h5ad)
        genes = [str(g) for g in adata.var_names]
        cells = np.asarray(adata.X[:200].todense() if hasattr(adata.X, "todense") else adata.X[:200])
        body = {"genes": genes, "cells": cells.tolist(), "return_probabilities": True}
        response = httpx.post(f"{base}/v1/predict", json=body, timeout=60)
        assert response.status_code == 200, response.text
        predictor = Predictor.load(random_bundle_dir, device="cpu")
        served = np.array([[p["probabilities"][c] for c in predictor.classes] for p in response.json()["predictions"]])
        np.testing.assert_allclose(served, predictor.predict_proba(cells, genes), atol=1e-4)
    finally:
        server.terminate()
        server.wait(timeout=30)
