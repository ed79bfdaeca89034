"""Objects several test packages build: the shared gene and class names, random-weight bundles, random
counts and a small synthetic multi-lab AnnData.

The random bundle is the reliability suite's (:func:`benchmarks.reliability.inputs.random_bundle`): the
benchmarks serve the same kind of model, and they do not import from ``tests``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import anndata
import numpy as np
import torch

from benchmarks.reliability.inputs import random_bundle
from model.bundle import ModelBundle
from model.novelty import DEFAULT_METHOD, LOGITS, NoveltyDetector, novelty_features
from model.preprocessing import to_model_input
from training.synthetic import make_multilab

__all__ = ["CLASSES", "GENES", "add_unknown_checks", "random_bundle", "random_counts", "synthetic_adata"]

GENES = [f"G{i}" for i in range(40)]
"""Gene names of the small models the tests build."""
CLASSES = ["B", "Mono", "NK", "T"]
"""Cell types of the small models the tests build."""


def random_counts(n_cells: int, seed: int = 1, n_genes: int = len(GENES)) -> np.ndarray:
    """Whole-number Poisson counts (mean 3), cells x genes, float32."""
    return np.random.default_rng(seed).poisson(3.0, size=(n_cells, n_genes)).astype(np.float32)


def synthetic_adata(
    n_cells: int = 60,
    genes: Sequence[str] = GENES,
    *,
    seed: int = 0,
    n_types: int = 4,
    n_labs: int = 2,
    lab_effect: float = 0.5,
    library_size: float = 150.0,
) -> anndata.AnnData:
    """Raw counts of a synthetic multi-lab data set (:func:`training.synthetic.make_multilab`) over ``genes``.

    ``library_size`` (typical counts per cell) defaults to a few counts per gene, as in a small panel.

    Returns:
        AnnData with float32 CSR counts in ``X``, cells named ``cell0``, ``cell1``..., categorical
        ``obs['cell_type']`` (``type_0``...) and ``obs['batch']`` (``lab_0``...), ``genes`` as
        ``var_names``.
    """
    adata = make_multilab(
        n_cells=n_cells,
        n_genes=len(genes),
        n_types=n_types,
        n_labs=n_labs,
        lab_effect=lab_effect,
        seed=seed,
        library_size=library_size,
    )
    adata.obs_names = [f"cell{i}" for i in range(n_cells)]
    adata.var_names = list(genes)
    return adata


def add_unknown_checks(
    bundle: ModelBundle,
    counts: np.ndarray,
    *,
    min_detected_genes: int = 5,
    quantile: float = 0.99,
    method: str = DEFAULT_METHOD,
) -> ModelBundle:
    """``bundle`` with the Unknown checks a training run adds: a ``method`` novelty detector fitted on the
    features (:func:`model.novelty.novelty_features`) of the first half of ``counts`` (labelled by the
    model's own argmax), its threshold the ``quantile`` of the second half's scores, and ``min_detected_genes``."""
    model = bundle.build_model()
    inputs = torch.from_numpy(to_model_input(counts.copy(), "counts", bundle.preprocessing.target_sum))
    features = {kind: values.numpy() for kind, values in novelty_features(model, inputs).items()}
    half = len(counts) // 2
    first, second = ({kind: values[rows] for kind, values in features.items()} for rows in (slice(half), slice(half, None)))
    fitted = NoveltyDetector.fit(method, first, first[LOGITS].argmax(axis=1), len(bundle.classes))
    detector = NoveltyDetector.from_state(*fitted.to_state())
    detector.calibrate(second, quantile)
    return replace(bundle, novelty=detector, min_detected_genes=min_detected_genes, sha256=None)
