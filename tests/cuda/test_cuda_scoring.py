"""``celltype score --device cuda`` gives the answers of ``--device cpu`` (and refuses nothing else)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd

from .conftest import CUDA_ONLY, REPO, command_env

pytestmark = CUDA_ONLY


def score(data, bundle, out, device: str) -> pd.DataFrame:
    """Run ``python -m cli score`` on ``device`` and read its parquet output."""
    command = [sys.executable, "-m", "cli", "score", str(data), "--model", str(bundle), "--out", str(out),
               "--device", device, "--no-progress", "--chunk-size", "256", "--top-k", "4"]
    done = subprocess.run(command, cwd=REPO, env=command_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return pd.read_parquet(out)


def test_cuda_scores_equal_cpu_scores(labeled_h5ad, random_bundle_dir, tmp_path) -> None:
    on_cpu = score(labeled_h5ad, random_bundle_dir, tmp_path / "cpu.parquet", "cpu")
    on_cuda = score(labeled_h5ad, random_bundle_dir, tmp_path / "cuda.parquet", "cuda")
    assert len(on_cuda) == 600 and on_cuda["cell_id"].tolist() == on_cpu["cell_id"].tolist()
    probabilities = [c for c in on_cpu.columns if c.startswith("probability:")]
    assert len(probabilities) == 4
    np.testing.assert_allclose(on_cuda[probabilities].to_numpy(), on_cpu[probabilities].to_numpy(), atol=1e-4)
    agree = (on_cuda["predicted_cell_type"] == on_cpu["predicted_cell_type"]).mean()
    assert agree >= 0.99  # only cells within float noise of the threshold or a tie may differ
