"""Shared pieces of the CUDA tests: the skip marks, a small labeled data set, and a random model for it.

Every test here carries :data:`CUDA_ONLY`: marked ``cuda`` and skipped, with the reason, when
``torch.cuda.is_available()`` is false.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anndata as ad
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
CUDA_ONLY = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]
"""``pytestmark`` of every CUDA test module."""


def command_env(**overrides: str) -> dict[str, str]:
    """This environment for a ``celltype`` subprocess: venv first on PATH, no tracking URI from outside."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(overrides)
    return env


@pytest.fixture(scope="session")
def labeled_h5ad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 cells x 120 genes, 4 cell types (``obs['cell_type']``), 3 labs (``obs['batch']``), raw counts."""
    from training.synthetic import make_multilab

    path = tmp_path_factory.mktemp("cuda-data") / "multilab.h5ad"
    make_multilab(n_cells=600, n_genes=120, n_types=4, n_labs=3, seed=1).write_h5ad(path)
    return path


@pytest.fixture(scope="session")
def random_bundle_dir(labeled_h5ad: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BRN classifier (hidden 64-32) with random weights and settled statistics over the file's genes."""
    from model.bundle import ModelBundle, save_bundle
    from model.classifier import CellTypeClassifier, ClassifierConfig
    from model.preprocessing import Preprocessing

    adata = ad.read_h5ad(labeled_h5ad)
    genes = [str(g) for g in adata.var_names]
    classes = sorted(adata.obs["cell_type"].astype(str).unique())
    torch.manual_seed(0)
    model = CellTypeClassifier(ClassifierConfig(n_genes=len(genes), n_classes=len(classes), hidden_sizes=(64, 32)))
    model.train()
    with torch.no_grad():
        for _ in range(5):
            model(torch.randn(64, len(genes)))
    bundle = ModelBundle.from_model(model, genes=genes, classes=classes, preprocessing=Preprocessing())
    path = tmp_path_factory.mktemp("cuda-model") / "bundle"
    save_bundle(bundle, path)
    return path
