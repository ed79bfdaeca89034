"""Fixtures for the model-core tests: a small trained-looking classifier and its bundle."""

import numpy as np
import pytest

from model.bundle import ModelBundle, save_bundle
from tests.factories import CLASSES, GENES, random_bundle, random_counts


def make_bundle(norm: str = "batchrenorm", seed: int = 0) -> ModelBundle:
    """A classifier with random weights and non-trivial running statistics, bundled."""
    return random_bundle(
        GENES, CLASSES, seed=seed, norm=norm, temperature=1.5, unknown_threshold=0.4,
        metadata={"train_batches": ["lab1", "lab2"]},
    )


@pytest.fixture
def bundle(seed: int) -> ModelBundle:
    """An in-memory bundle (not yet saved)."""
    return make_bundle(seed=seed)


@pytest.fixture
def bundle_dir(tmp_path, bundle):
    """A bundle saved to disk."""
    path = tmp_path / "bundle"
    save_bundle(bundle, path)
    return path


@pytest.fixture
def counts(seed: int) -> np.ndarray:
    """Raw counts for 50 cells over the model's genes."""
    return random_counts(50, seed=seed + 1)
