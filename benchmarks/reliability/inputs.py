"""What the scenarios feed celltype: random-weight bundles, training outputs without training, request
bodies, small ``.h5ad`` files and the bundled CellBench data set."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.bundle import ModelBundle, save_bundle
from model.classifier import CellTypeClassifier, ClassifierConfig
from model.preprocessing import Preprocessing


def random_bundle(
    genes: Sequence[str],
    classes: Sequence[str],
    *,
    seed: int = 0,
    norm: str = "batchrenorm",
    hidden_sizes: tuple[int, ...] = (16, 8),
    settle_rows: int = 32,
    input_mean_scale: float = 1.0,
    **bundle_fields: Any,
) -> ModelBundle:
    """A bundled classifier with random weights and non-trivial running statistics, without training.

    Five train-mode forwards of ``settle_rows`` random rows settle the norm layers' statistics; the
    per-gene input scaling is random too (means up to ``input_mean_scale``). Everything is a function of
    ``seed``. ``bundle_fields`` (temperature, unknown_threshold, metadata, ...) go to :class:`ModelBundle`.
    """
    torch.manual_seed(seed)
    config = ClassifierConfig(
        n_genes=len(genes), n_classes=len(classes), hidden_sizes=hidden_sizes, norm=norm
    )
    model = CellTypeClassifier(config)
    model.train()
    with torch.no_grad():
        for _ in range(5):
            model(torch.randn(settle_rows, len(genes)) * 2 + 1)
    model.set_input_scaling(torch.rand(len(genes)) * input_mean_scale, torch.rand(len(genes)) + 0.5)
    return ModelBundle.from_model(
        model, genes=list(genes), classes=list(classes), preprocessing=Preprocessing(), **bundle_fields
    )


def gene_names(n_genes: int) -> list[str]:
    """``gene_000``... as :mod:`training.synthetic` names them."""
    width = len(str(max(n_genes - 1, 0)))
    return [f"gene_{i:0{width}d}" for i in range(n_genes)]


def save_random_bundle(
    directory: Path, n_genes: int, n_classes: int = 5, seed: int = 0, hidden: tuple[int, ...] = (32, 16)
) -> Path:
    """Save a :func:`random_bundle` over :func:`gene_names` and ``type_0``... into ``directory``; returns it."""
    bundle = random_bundle(
        gene_names(n_genes),
        [f"type_{i}" for i in range(n_classes)],
        seed=seed,
        hidden_sizes=hidden,
        settle_rows=64,
        input_mean_scale=2.0,
        temperature=1.0,
        unknown_threshold=0.0,
        metadata={
            "datasets": ["synthetic"],
            "holdout_scores": {"accuracy": 0.5, "macro_f1": 0.5},
            "seed": seed,
        },
    )
    save_bundle(bundle, directory)
    return directory


def write_training_output(out_dir: Path, n_genes: int = 200, seed: int = 0, macro_f1: float = 0.8) -> Path:
    """A training output directory (bundle, config, metrics) as ``celltype train`` writes it, without training."""
    save_random_bundle(out_dir / "bundle", n_genes, seed=seed)
    (out_dir / "config.json").write_text(json.dumps({"seed": seed, "n_top_genes": n_genes}))
    scores = {"accuracy": macro_f1, "macro_f1": macro_f1, "n_cells": 100, "per_class": {}}
    metrics = {"validation": scores, "holdout": {"overall": scores, "per_batch": {}}}
    (out_dir / "metrics.json").write_text(json.dumps(metrics))
    return out_dir


def bundled_data() -> Path:
    """The bundled CellBench ``.h5ad``."""
    from training.data import bundled_dataset

    return Path(bundled_dataset())


def predict_body(genes: Sequence[str], n_cells: int, seed: int = 0) -> bytes:
    """A ``/v1/predict`` JSON body of ``n_cells`` Poisson counts over ``genes``."""
    counts = np.random.default_rng(seed).poisson(2.0, size=(n_cells, len(genes)))
    return json.dumps({"genes": list(genes), "cells": counts.tolist()}).encode()


def h5ad_bytes(genes: Sequence[str], n_cells: int = 20, seed: int = 0) -> bytes:
    """A small ``.h5ad`` file of Poisson counts over ``genes``."""
    import anndata
    import pandas as pd

    counts = np.random.default_rng(seed).poisson(2.0, size=(n_cells, len(genes))).astype(np.float32)
    adata = anndata.AnnData(
        X=counts,
        obs=pd.DataFrame(index=[f"c{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=list(genes)),
    )
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "cells.h5ad"
        adata.write_h5ad(path)
        return path.read_bytes()

