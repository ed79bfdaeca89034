"""Shared fixtures of the training tests: small synthetic multi-lab data sets on disk, and the real sets."""

from __future__ import annotations

import os
from pathlib import Path

import anndata
import pytest

from training.synthetic import make_multilab

REAL_DATA_DIR = Path(os.environ.get("CELLTYPE_REAL_DATA", Path(__file__).resolve().parents[3] / "shared/data/h5ad"))
"""The shared real data sets (``CELLTYPE_REAL_DATA`` overrides the location)."""


@pytest.fixture(scope="session")
def multilab_adata() -> anndata.AnnData:
    """600 cells x 120 genes, 4 cell types, 3 labs, raw counts (do not modify: shared by the session)."""
    return make_multilab(n_cells=600, n_genes=120, n_types=4, n_labs=3, seed=1)


@pytest.fixture(scope="session")
def multilab_h5ad(multilab_adata: anndata.AnnData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``multilab_adata`` written to one ``.h5ad`` file with ``obs['batch']``."""
    path = tmp_path_factory.mktemp("multilab") / "multilab.h5ad"
    multilab_adata.write_h5ad(path)
    return path


@pytest.fixture(scope="session")
def lab_files(multilab_adata: anndata.AnnData, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """``multilab_adata`` split into one file per lab (``lab_0.h5ad``...) without a batch column."""
    folder = tmp_path_factory.mktemp("labs")
    paths = []
    for lab in sorted(multilab_adata.obs["batch"].unique()):
        part = multilab_adata[multilab_adata.obs["batch"] == lab].copy()
        del part.obs["batch"]
        path = folder / f"{lab}.h5ad"
        part.write_h5ad(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The folder of the real ``.h5ad`` sets; the test is skipped when it is absent."""
    if not (REAL_DATA_DIR / "cellbench.h5ad").is_file():
        pytest.skip(f"real data sets not found in {REAL_DATA_DIR} (set CELLTYPE_REAL_DATA to their folder)")
    return REAL_DATA_DIR
