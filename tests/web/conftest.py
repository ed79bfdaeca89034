"""Fixtures for the web page tests: a small trained model, synthetic uploads and the app under TestClient."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient

from model.bundle import ModelBundle, save_bundle
from model.classifier import CellTypeClassifier, ClassifierConfig
from model.preprocessing import Preprocessing, to_model_input
from service.app import create_app
from service.settings import Settings
from tests.factories import add_unknown_checks

GENES = [f"ENSG{i:011d}" for i in range(48)]
CLASSES = ["B cell", "Monocyte", "NK cell", "T cell"]
MARKERS_PER_TYPE = 10
"""Genes 0-9 mark the first type, 10-19 the second, ...; the last 8 genes are background."""
MIN_DETECTED_GENES = 8
"""The checked bundle's ``min_detected_genes`` (an ordinary synthetic cell detects about 27 of the 48 genes)."""


def synthetic_counts(n_cells: int, seed: int = 0, *, ambiguous: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Counts (cells x GENES, float32) of four cell types with marker genes, and each cell's type index.

    A share ``ambiguous`` of the cells mixes two types' markers, so some predictions are uncertain.
    """
    rng = np.random.default_rng(seed)
    types = rng.integers(0, len(CLASSES), size=n_cells)
    rates = np.full((n_cells, len(GENES)), 0.6)
    for row, kind in enumerate(types):
        rates[row, kind * MARKERS_PER_TYPE : (kind + 1) * MARKERS_PER_TYPE] = 6.0
    mixed = np.flatnonzero(rng.random(n_cells) < ambiguous)
    other = (types[mixed] + 1) % len(CLASSES)
    for row, kind in zip(mixed, other, strict=True):
        rates[row, kind * MARKERS_PER_TYPE : (kind + 1) * MARKERS_PER_TYPE] = 6.0
    return rng.poisson(rates).astype(np.float32), types


def trained_bundle(seed: int = 0, threshold: float = 0.8) -> ModelBundle:
    """A classifier (hidden 16-8, Batch Renormalization) trained for a few hundred steps on synthetic counts."""
    torch.manual_seed(seed)
    counts, types = synthetic_counts(2000, seed=seed, ambiguous=0.0)
    inputs = torch.from_numpy(to_model_input(counts.copy(), "counts", Preprocessing().target_sum))
    targets = torch.from_numpy(types)
    model = CellTypeClassifier(ClassifierConfig(n_genes=len(GENES), n_classes=len(CLASSES), hidden_sizes=(16, 8)))
    model.set_input_scaling(inputs.mean(dim=0), inputs.std(dim=0))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    generator = torch.Generator().manual_seed(seed)
    for _ in range(200):
        batch = torch.randint(0, len(targets), (128,), generator=generator)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs[batch]), targets[batch]).backward()
        optimizer.step()
    return ModelBundle.from_model(
        model,
        genes=list(GENES),
        classes=list(CLASSES),
        preprocessing=Preprocessing(),
        unknown_threshold=threshold,
        metadata={
            "datasets": ["synthetic"],
            "train_batches": ["lab_a", "lab_b"],
            "holdout_batches": ["lab_c"],
            "holdout_scores": {"accuracy": 0.97, "macro_f1": 0.96},
            "trained_at": "2026-01-01T00:00:00+00:00",
        },
    )


def checked_bundle(seed: int = 0, threshold: float = 0.8) -> ModelBundle:
    """:func:`trained_bundle` with the Unknown checks a training run adds: an ``input_pca`` novelty detector
    (threshold at the 0.999 quantile of cells like the training ones) and ``min_detected_genes`` =
    :data:`MIN_DETECTED_GENES`."""
    counts, _ = synthetic_counts(2000, seed=seed + 5, ambiguous=0.0)
    return add_unknown_checks(
        trained_bundle(seed, threshold), counts, min_detected_genes=MIN_DETECTED_GENES, quantile=0.999
    )


def degenerate_cells(
    counts: np.ndarray, *, empty: list[int], sparse: list[int], novel: list[int] | None = None
) -> np.ndarray:
    """``counts`` with the rows ``empty`` all zero (empty droplets), the rows ``sparse`` detecting only
    three genes (fewer than :data:`MIN_DETECTED_GENES`) and the rows ``novel`` a type the model never saw
    (high on the 8 background genes, no type's markers)."""
    changed = counts.copy()
    changed[empty] = 0
    changed[sparse] = 0
    changed[np.ix_(sparse, [0, 1, 2])] = 5
    novel = list(novel or [])
    rates = np.full((len(novel), len(GENES)), 0.6)
    rates[:, len(CLASSES) * MARKERS_PER_TYPE :] = 8.0
    changed[novel] = np.random.default_rng(9).poisson(rates)
    return changed


def cells_h5ad(
    path: Path,
    n_cells: int,
    seed: int = 1,
    *,
    genes: list[str] | None = None,
    empty: list[int] | None = None,
    sparse: list[int] | None = None,
    novel: list[int] | None = None,
) -> Path:
    """Write an ``.h5ad`` of synthetic counts: obs_names ``cell-00000``..., var_names ``genes`` (default: the
    model's), ``var['ensembl_id']`` always the model's gene names; rows ``empty`` / ``sparse`` / ``novel``
    changed by :func:`degenerate_cells`."""
    counts, _ = synthetic_counts(n_cells, seed=seed)
    counts = degenerate_cells(counts, empty=list(empty or []), sparse=list(sparse or []), novel=novel)
    names = list(genes or GENES)
    adata = ad.AnnData(
        X=counts,
        obs=pd.DataFrame(index=[f"cell-{i:05d}" for i in range(n_cells)]),
        var=pd.DataFrame({"ensembl_id": GENES}, index=names),
    )
    adata.write_h5ad(path)
    return path


def cells_csv_text(n_cells: int, seed: int = 1, *, empty: list[int] | None = None) -> str:
    """The same kind of cells as CSV text: header ``cell_id,GENE...``, one row per cell (rows ``empty`` all zero)."""
    counts, _ = synthetic_counts(n_cells, seed=seed)
    counts = degenerate_cells(counts, empty=list(empty or []), sparse=[])
    rows = [",".join(["cell_id", *GENES])]
    rows += [f"cell-{i:05d}," + ",".join(str(int(value)) for value in counts[i]) for i in range(n_cells)]
    return "\n".join(rows) + "\n"


@pytest.fixture(scope="session")
def web_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained bundle saved once per session (read-only)."""
    path = tmp_path_factory.mktemp("web") / "bundle"
    save_bundle(trained_bundle(), path)
    return path


@pytest.fixture(scope="session")
def checked_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`checked_bundle` saved once per session (read-only)."""
    path = tmp_path_factory.mktemp("web-checked") / "bundle"
    save_bundle(checked_bundle(), path)
    return path


@pytest.fixture
def web_client(web_bundle_dir: Path) -> Iterator[Callable[..., TestClient]]:
    """Factory: a started TestClient serving the trained bundle with ``Settings`` overrides."""
    clients: list[TestClient] = []

    def factory(**overrides: Any) -> TestClient:
        settings = Settings(**{"model_uri": str(web_bundle_dir), "device": "cpu", **overrides})
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.__exit__(None, None, None)
