"""Training records every var column that identifies the genes, so requests may use any of them."""

from __future__ import annotations

import anndata

from training.config import TrainConfig
from training.data import load_labeled
from training.gene_identifiers import shared_identifiers
from training.pipeline import train_model


def test_only_columns_every_file_agrees_on_are_shared():
    first = (["a", "b", "c"], {"ids": ["A1", "B1", "C1"], "sym": ["x", "y", "z"]})
    second = (["c", "a"], {"ids": ["C1", "A1"], "sym": ["z", "other"]})
    assert shared_identifiers([first, second], ["a", "c"]) == {"ids": ["A1", "C1"]}
    assert shared_identifiers([first, (["a", "c"], {})], ["a", "c"]) == {}


def test_training_records_the_identifier_columns(multilab_adata: anndata.AnnData, tmp_path):
    adata = multilab_adata.copy()
    adata.var["gene_ids"] = [f"ENSG{i:011d}" for i in range(adata.n_vars)]
    adata.var["feature_type"] = "Gene Expression"  # not unique: not an identifier
    path = tmp_path / "labs.h5ad"
    adata.write_h5ad(path)
    data, _ = load_labeled(path)
    assert list(data.gene_identifiers) == ["gene_ids"]
    config = TrainConfig(
        label_key="cell_type", batch_key="batch", n_top_genes=40, hidden_sizes=(16,), epochs=1,
        batch_size=64, device="cpu", holdout_batches=(),
    )
    bundle = train_model(config, data, score_holdout=False).bundle
    position = {gene: i for i, gene in enumerate(adata.var_names)}
    assert bundle.gene_identifiers == {"gene_ids": [adata.var["gene_ids"].iloc[position[g]] for g in bundle.genes]}
