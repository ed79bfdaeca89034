"""The synthetic multi-lab generator and the chunked large-file writer."""

from __future__ import annotations

import tracemalloc

import anndata
import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from training.data import load_labeled
from training.synthetic import BLOCK_CELLS, make_multilab, write_synthetic_h5ad


def _lab_distance(lab_effect: float) -> float:
    """Mean distance between labs' centroids of the same cell type (log-normalized values)."""
    adata = make_multilab(n_cells=1500, n_genes=200, n_types=3, n_labs=3, lab_effect=lab_effect, seed=7,
                          as_counts=False)
    X = adata.X.toarray()
    distances = []
    for cell_type in adata.obs["cell_type"].cat.categories:
        centroids = [
            X[((adata.obs["cell_type"] == cell_type) & (adata.obs["batch"] == lab)).to_numpy()].mean(axis=0)
            for lab in adata.obs["batch"].cat.categories
        ]
        distances += [np.linalg.norm(a - b) for i, a in enumerate(centroids) for b in centroids[i + 1 :]]
    return float(np.mean(distances))


def test_shapes_annotations_and_counts() -> None:
    adata = make_multilab(n_cells=700, n_genes=90, n_types=4, n_labs=2, seed=3)
    assert adata.shape == (700, 90)
    assert isinstance(adata.X, sp.csr_matrix) and adata.X.dtype == np.float32
    assert np.array_equal(adata.X.data, np.rint(adata.X.data)) and adata.X.data.min() > 0
    assert list(adata.obs.columns) == ["cell_type", "batch"]
    assert list(adata.obs["cell_type"].cat.categories) == ["type_0", "type_1", "type_2", "type_3"]
    assert list(adata.obs["batch"].cat.categories) == ["lab_0", "lab_1"]
    assert adata.obs.groupby(["batch", "cell_type"], observed=False).size().min() > 20
    assert adata.obs_names.is_unique and adata.var_names[0] == "gene_00"
    assert adata.uns["synthetic"]["seed"] == 3
    library = np.asarray(adata.X.sum(axis=1)).ravel()
    assert 500 < np.median(library) < 4500


def test_generation_is_deterministic_in_the_seed() -> None:
    a = make_multilab(n_cells=300, n_genes=50, seed=11)
    b = make_multilab(n_cells=300, n_genes=50, seed=11)
    c = make_multilab(n_cells=300, n_genes=50, seed=12)
    assert (a.X != b.X).nnz == 0 and a.obs.equals(b.obs)
    assert (a.X != c.X).nnz > 0


def test_labs_differ_more_as_the_lab_effect_grows() -> None:
    distances = [_lab_distance(effect) for effect in (0.0, 0.5, 1.5)]
    assert distances[0] < distances[1] < distances[2]
    assert distances[2] > 3 * distances[0]


def test_marker_genes_are_up_in_their_type() -> None:
    adata = make_multilab(n_cells=1000, n_genes=200, n_types=4, lab_effect=0.3, seed=4, as_counts=False)
    X = adata.X.toarray()
    for cell_type in adata.obs["cell_type"].cat.categories:
        markers = (adata.var["marker_of"] == cell_type).to_numpy()
        inside = (adata.obs["cell_type"] == cell_type).to_numpy()
        assert markers.sum() == 8
        assert X[inside][:, markers].mean() > X[~inside][:, markers].mean() + 1.0  # log scale


def test_confounded_puts_the_last_type_in_one_lab(tmp_path) -> None:
    adata = make_multilab(n_cells=900, n_genes=50, n_types=3, n_labs=3, confounded=True, seed=5)
    table = adata.obs.groupby(["cell_type", "batch"], observed=False).size().unstack()
    assert table.loc["type_2", "lab_0"] > 0 and table.loc["type_2", ["lab_1", "lab_2"]].sum() == 0
    assert (table.loc[["type_0", "type_1"]] > 0).all().all()
    path = tmp_path / "confounded.h5ad"
    adata.write_h5ad(path)
    assert load_labeled(path)[1].confounded == {"type_2": "lab_0"}


def test_lognormalized_output_is_log1p_cp10k_of_the_counts() -> None:
    counts = make_multilab(n_cells=200, n_genes=60, seed=8).X.toarray()
    lognorm = make_multilab(n_cells=200, n_genes=60, seed=8, as_counts=False).X.toarray()
    expected = np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4)
    np.testing.assert_allclose(lognorm, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_cells": 0}, "must be positive"),
        ({"n_genes": 3, "n_types": 5}, "at least n_types"),
        ({"confounded": True, "n_labs": 1}, "at least 2 labs"),
        ({"lab_effect": -1.0}, ">= 0"),
        ({"library_size": 0.0}, "must be positive"),
    ],
)
def test_impossible_parameters_are_refused(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        make_multilab(**kwargs)


def test_the_written_file_reads_back_in_full_and_backed(tmp_path) -> None:
    path = write_synthetic_h5ad(tmp_path / "big.h5ad", 2500, n_genes=80, chunk_size=700, seed=9, n_labs=4)
    expected = make_multilab(n_cells=2500, n_genes=80, seed=9, n_labs=4)
    full = anndata.read_h5ad(path)
    assert full.shape == (2500, 80) and (full.X != expected.X).nnz == 0
    assert full.obs.equals(expected.obs) and full.var.equals(expected.var)
    assert full.uns["synthetic"]["n_labs"] == 4
    backed = anndata.read_h5ad(path, backed="r")
    assert (backed.X[1000:1100] != expected.X[1000:1100]).nnz == 0
    with h5py.File(path) as f:
        assert f["X/indptr"].dtype == np.int64 and f["X/data"].compression is None
    data, report = load_labeled(path, backed=True, chunk_rows=512)
    assert data.n_cells == 2500 and report.files[0]["backed"] and (data.X != expected.X).nnz == 0


def test_the_chunk_size_and_compression_do_not_change_the_data(tmp_path) -> None:
    a = write_synthetic_h5ad(tmp_path / "a.h5ad", 1500, n_genes=30, chunk_size=1, seed=1, as_counts=False)
    b = write_synthetic_h5ad(tmp_path / "b.h5ad", 1500, n_genes=30, chunk_size=10**6, seed=1, as_counts=False,
                             compression="gzip")
    x_a, x_b = anndata.read_h5ad(a).X, anndata.read_h5ad(b).X
    assert (x_a != x_b).nnz == 0
    assert load_labeled(a)[0].input_kind == "lognorm"
    with h5py.File(b) as f:
        assert f["X/data"].compression == "gzip"


def test_the_writer_refuses_bad_arguments(tmp_path) -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        write_synthetic_h5ad(tmp_path / "x.h5ad", 10, chunk_size=0)
    with pytest.raises(TypeError, match="n_cell_types"):
        write_synthetic_h5ad(tmp_path / "x.h5ad", 10, n_cell_types=3)


def test_writing_keeps_memory_flat_in_the_number_of_cells(tmp_path) -> None:
    def peak(n_cells: int) -> int:
        tracemalloc.start()
        write_synthetic_h5ad(tmp_path / f"{n_cells}.h5ad", n_cells, n_genes=300, chunk_size=2048, seed=0)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    small, large = peak(4 * BLOCK_CELLS), peak(32 * BLOCK_CELLS)
    assert large < 1.25 * small  # 8 times the cells
