"""Fixtures for the model-core tests: a small trained-looking classifier and its bundle."""

import numpy as np
import pytest
import torch

from model.bundle import ModelBundle, save_bundle
from model.classifier import CellTypeClassifier, ClassifierConfig
from model.preprocessing import Preprocessing

GENES = [f"G{i}" for i in range(40)]
CLASSES = ["B", "Mono", "T"]


def make_bundle(norm: str = "batchrenorm", seed: int = 0) -> ModelBundle:
    """A classifier with random weights and non-trivial running statistics, bundled."""
    torch.manual_seed(seed)
    model = CellTypeClassifier(ClassifierConfig(n_genes=len(GENES), n_classes=len(CLASSES), hidden_sizes=(16, 8), norm=norm))
    model.train()
    with torch.no_grad():
        for _ in range(5):
            model(torch.randn(32, len(GENES)) * 2 + 1)
    model.set_input_scaling(torch.rand(len(GENES)), torch.rand(len(GENES)) + 0.5)
    return ModelBundle.from_model(
        model,
        genes=list(GENES),
        classes=list(CLASSES),
        preprocessing=Preprocessing(),
        temperature=1.5,
        unknown_threshold=0.4,
        metadata={"train_batches": ["lab1", "lab2"]},
    )


@pytest.fixture
def bundle() -> ModelBundle:
    """An in-memory bundle (not yet saved)."""
    return make_bundle()


@pytest.fixture
def bundle_dir(tmp_path, bundle):
    """A bundle saved to disk."""
    path = tmp_path / "bundle"
    save_bundle(bundle, path)
    return path


@pytest.fixture
def counts() -> np.ndarray:
    """Raw counts for 50 cells over the model's genes."""
    return np.random.default_rng(1).poisson(3.0, size=(50, len(GENES))).astype(np.float32)
