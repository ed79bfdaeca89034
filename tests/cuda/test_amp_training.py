"""Training on CUDA with mixed precision: float16 with the GradScaler, bfloat16 without; bundles serve on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

import cli.main
from model.bundle import load_bundle
from model.predict import Predictor
from training.checkpoint import checkpoint_path

from .conftest import CUDA_ONLY

pytestmark = CUDA_ONLY

OPTIONS = ["--device", "cuda", "--no-progress", "--set", "epochs=20", "--set", "hidden_sizes=64,32"]
"""20 epochs: 0.997 of the training cells right on CPU (measured); mixed precision must get close."""


def train_on_cuda(data: Path, out: Path, tracking_uri: str) -> Path:
    """``celltype train`` on CUDA in this process (registry unreachable: exit code 3, bundle written)."""
    code = cli.main.main(["train", str(data), "--out", str(out), "--tracking-uri", tracking_uri, *OPTIONS])
    assert code == 3
    return out


def training_accuracy(bundle_dir: Path, data: Path, device: str) -> tuple[float, np.ndarray]:
    """Share of the file's cells predicted as their ``cell_type``, and the probabilities."""
    adata = ad.read_h5ad(data)
    predictor = Predictor.load(bundle_dir, device=device)
    probabilities = predictor.predict_proba(adata.X, [str(g) for g in adata.var_names])
    labels = np.asarray(predictor.classes)[probabilities.argmax(1)]
    return float((labels == adata.obs["cell_type"].astype(str).to_numpy()).mean()), probabilities


def check_trained(out: Path, data: Path) -> None:
    """Finite losses, float32 weights, accurate on its cells, and the same answers on CPU as on CUDA."""
    history = json.loads((out / "history.json").read_text())
    losses = [record["train_loss"] for record in history]
    assert len(losses) == 20 and np.isfinite(losses).all() and losses[-1] < losses[0]
    bundle = load_bundle(out / "bundle")
    assert all(t.dtype == torch.float32 for t in bundle.state_dict.values() if t.is_floating_point())
    accuracy, on_cpu = training_accuracy(out / "bundle", data, "cpu")
    assert accuracy >= 0.95
    _, on_cuda = training_accuracy(out / "bundle", data, "cuda")
    np.testing.assert_allclose(on_cuda, on_cpu, atol=1e-3)


def test_float16_autocast_scales_the_loss_with_the_grad_scaler(
    labeled_h5ad, tmp_path, monkeypatch, unreachable_tracking_uri
) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)  # as on pre-Ampere GPUs
    out = train_on_cuda(labeled_h5ad, tmp_path / "fp16", unreachable_tracking_uri)
    scaler = torch.load(checkpoint_path(out), weights_only=True)["scaler"]
    assert scaler, "the GradScaler was disabled: float16 training without loss scaling"
    assert np.isfinite(float(scaler["scale"])) and float(scaler["scale"]) > 0
    check_trained(out, labeled_h5ad)


def test_bfloat16_autocast_trains_without_a_scaler(labeled_h5ad, tmp_path, unreachable_tracking_uri) -> None:
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16: training uses float16 with the GradScaler (tested above)")
    out = train_on_cuda(labeled_h5ad, tmp_path / "bf16", unreachable_tracking_uri)
    assert torch.load(checkpoint_path(out), weights_only=True)["scaler"] == {}
    check_trained(out, labeled_h5ad)
