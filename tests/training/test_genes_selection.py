"""Gene selection for training: batch-aware highly variable genes (:func:`training.genes.select_genes`)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp

from model.errors import InputError
from training.data import LabeledData, load_labeled
from training.genes import GENE_SELECTION_METHODS, MIN_BATCH_CELLS, select_genes
from training.synthetic import make_multilab

N_MARKERS, N_LAB_GENES = 20, 20


def _labeled(X: np.ndarray | sp.spmatrix, labels, batches, input_kind: str = "counts") -> LabeledData:
    X = sp.csr_matrix(X, dtype=np.float32)
    return LabeledData(
        X=X,
        genes=[f"g{i:03d}" for i in range(X.shape[1])],
        labels=np.asarray(labels).astype(str),
        batches=np.asarray(batches).astype(str),
        cell_ids=np.arange(X.shape[0]).astype(str),
        input_kind=input_kind,
    )


def _markers_and_lab_genes(seed: int = 0) -> LabeledData:
    """3 labs x 300 cells, 4 types; genes 0-19 mark a type (x8), genes 20-39 differ only between labs
    (x0.2, x1, x5), the rest are background; means spread over two orders of magnitude."""
    rng = np.random.default_rng(seed)
    labs = np.repeat(np.arange(3), 300)
    types = rng.integers(0, 4, labs.size)
    means = np.tile(np.exp(rng.normal(1.0, 1.0, 200)), (labs.size, 1))
    markers = np.arange(N_MARKERS)
    means[:, markers] *= np.where(types[:, None] == (markers // 5)[None, :], 8.0, 1.0)
    means[:, N_MARKERS : N_MARKERS + N_LAB_GENES] *= np.array([0.2, 1.0, 5.0])[labs][:, None]
    return _labeled(rng.poisson(means), [f"t{t}" for t in types], [f"lab{b}" for b in labs])


def _indices(genes: list[str]) -> set[int]:
    return {int(g[1:]) for g in genes}


def test_batch_aware_selection_prefers_type_markers_over_lab_genes() -> None:
    data = _markers_and_lab_genes()
    batch_aware = _indices(select_genes(data, N_MARKERS))
    pooled = _indices(select_genes(data, N_MARKERS, "hvg_pooled"))
    lab_genes = set(range(N_MARKERS, N_MARKERS + N_LAB_GENES))
    assert batch_aware == set(range(N_MARKERS))
    assert len(pooled & lab_genes) >= N_MARKERS // 4  # what pooling gets wrong


def test_the_result_is_ranked_unique_and_deterministic() -> None:
    data = _markers_and_lab_genes()
    genes = select_genes(data, 50)
    assert len(genes) == 50 and len(set(genes)) == 50 and set(genes) <= set(data.genes)
    assert genes == select_genes(data, 50)
    shuffled = data.subset(np.random.default_rng(1).permutation(data.n_cells))
    assert select_genes(shuffled, 50) == genes  # independent of the row order


def test_genes_missing_in_a_batch_or_rarely_detected_are_dropped() -> None:
    data = _markers_and_lab_genes()
    X = data.X.tolil()
    lab1 = np.flatnonzero(data.batches == "lab1")
    for row in lab1:
        X[row, 0] = 0  # marker 0 not measured in lab1
    X[:, 1] = 0
    X[[0, 300, 600], 1] = 50  # marker 1 seen in 3 cells only, one per lab
    X = X.tocsr()
    X.eliminate_zeros()
    data = LabeledData(X, data.genes, data.labels, data.batches, data.cell_ids, "counts")
    everything = select_genes(data, None)
    assert "g000" not in everything and "g001" not in everything
    assert len(everything) == 198
    assert "g000" in select_genes(data, None, min_cells_per_batch=0)
    assert "g001" in select_genes(data, None, min_cells=3)


def test_small_batches_neither_rank_nor_filter() -> None:
    data = _markers_and_lab_genes()
    tiny = np.concatenate([np.arange(data.n_cells), [0, 1, 2]])
    batches = np.concatenate([data.batches, ["tiny"] * 3])
    padded = LabeledData(data.X[tiny], data.genes, data.labels[tiny], batches, tiny.astype(str), "counts")
    assert MIN_BATCH_CELLS > 3
    assert select_genes(padded, 30) == select_genes(data, 30)


def test_fewer_genes_than_asked_returns_every_eligible_gene() -> None:
    data = _markers_and_lab_genes()
    assert len(select_genes(data, 10_000)) == 200
    assert select_genes(data, None) == select_genes(data, 10_000)


def test_counts_and_their_lognormalized_values_give_the_same_genes() -> None:
    counts = make_multilab(n_cells=600, n_genes=150, seed=3)
    lognorm = make_multilab(n_cells=600, n_genes=150, seed=3, as_counts=False)

    def as_data(adata, kind):
        return LabeledData(adata.X, list(adata.var_names), adata.obs["cell_type"].astype(str).to_numpy(),
                           adata.obs["batch"].astype(str).to_numpy(), adata.obs_names.to_numpy(), kind)

    assert select_genes(as_data(counts, "counts"), 40) == select_genes(as_data(lognorm, "lognorm"), 40)


def test_bad_arguments_and_unusable_data_are_refused() -> None:
    data = _markers_and_lab_genes()
    with pytest.raises(ValueError, match=f"choose one of {', '.join(GENE_SELECTION_METHODS)}"):
        select_genes(data, 10, "hvg")
    with pytest.raises(ValueError, match="n_top must be"):
        select_genes(data, 0)
    small = data.subset(np.arange(5))
    with pytest.raises(InputError, match=f"at least {MIN_BATCH_CELLS} cells"):
        select_genes(small, 10)
    with pytest.raises(InputError, match="no gene is detected"):
        select_genes(data, 10, min_cells=10**6)


def test_the_matrix_is_never_densified() -> None:
    rng = np.random.default_rng(0)
    n_cells, n_genes = 20_000, 5_000
    X = sp.random(n_cells, n_genes, density=0.01, format="csr", dtype=np.float32, random_state=rng)
    X.data = np.ceil(X.data * 10)
    data = _labeled(X, rng.integers(0, 3, n_cells), rng.integers(0, 4, n_cells))
    tracemalloc.start()
    select_genes(data, 500, min_cells=1)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < n_cells * n_genes * 4 / 8


def test_real_cellbench_selection_is_quick_and_batch_aware(real_data_dir) -> None:
    data, _ = load_labeled(real_data_dir / "cellbench.h5ad")
    genes = select_genes(data, 2000)
    assert len(genes) == 2000 and genes == select_genes(data, 2000)
