"""Input files and a bundle for the scoring tests (``celltype score``, :mod:`service.scoring`, ``celltype.annotate``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from model.bundle import save_bundle
from service.scoring.job import ScoringJob, ScoringSummary, run_scoring
from tests.factories import CLASSES, random_bundle, synthetic_adata

MODEL_GENES = [f"G{i}" for i in range(60)]
"""The scoring model's genes: the input files hold 50 of them, shuffled, plus 15 it lacks."""
N_CELLS = 120
MAX_COUNT = 20
"""Largest count in the input files."""


def make_bundle_dir(directory: Path, seed: int = 0, classes: list[str] = CLASSES) -> Path:
    """A saved bundle over MODEL_GENES with random weights and non-trivial running statistics."""
    bundle = random_bundle(
        MODEL_GENES, classes, seed=seed, settle_rows=64, input_mean_scale=2.0, temperature=0.5, unknown_threshold=0.45
    )
    save_bundle(bundle, directory)
    return directory


def make_counts(n_cells: int = N_CELLS, seed: int = 0) -> tuple[sp.csr_matrix, list[str]]:
    """Sparse synthetic raw counts over 50 of the model's genes (shuffled) plus 15 genes the model lacks;
    cell 3 has no counts at all. Counts are capped at :data:`MAX_COUNT`, below any log-normalized value,
    so that declaring them log-normalized is refused for holding only whole numbers."""
    genes = MODEL_GENES[:50] + [f"EXTRA{i}" for i in range(15)]
    genes = list(np.random.default_rng(seed).permutation(genes))
    dense = np.minimum(synthetic_adata(n_cells, genes, seed=seed).X.toarray(), MAX_COUNT)
    dense[3] = 0
    return sp.csr_matrix(dense), genes


def write_h5ad(path: Path, X, genes: list[str], **layers) -> Path:
    """An .h5ad holding ``X`` over ``genes`` (and ``layers``), with the synthetic data set's cells
    (``cell0``...) and obs columns (``cell_type``, ``batch``)."""
    n_types = min(len(CLASSES), len(genes))  # the generator needs a marker gene per type
    adata = synthetic_adata(max(X.shape[0], 1), genes, n_types=n_types)[: X.shape[0]].copy()
    adata.X = X
    for name, layer in layers.items():
        adata.layers[name] = layer
    adata.write_h5ad(path)
    return path


def score(inputs, bundle_dir: Path, out: Path, **options) -> ScoringSummary:
    """Run scoring without a progress bar."""
    paths = tuple(Path(p) for p in (inputs if isinstance(inputs, list | tuple) else [inputs]))
    return run_scoring(ScoringJob(inputs=paths, model=str(bundle_dir), out=out, progress=False, **options))
