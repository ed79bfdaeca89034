"""The notebook API: ``celltype.annotate`` writes what ``celltype score`` writes; ``celltype.load`` loads."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import celltype
import cli.main
from model.errors import GeneMismatchError
from model.predict import Predictor


def test_annotate_matches_celltype_score_column_for_column(bundle_dir, counts_file, tmp_path):
    scored = tmp_path / "scored.h5ad"
    assert cli.main.main(["score", str(counts_file), "--model", str(bundle_dir), "--out", str(scored), "--no-progress"]) == 0
    expected = ad.read_h5ad(scored)
    adata = ad.read_h5ad(counts_file)
    returned = celltype.annotate(adata, model=str(bundle_dir), device="cpu")
    assert returned is adata
    new_columns = [c for c in expected.obs.columns if c not in ("cell_type", "batch")]
    assert new_columns and list(adata.obs.columns[-len(new_columns):]) == new_columns
    pd.testing.assert_frame_equal(adata.obs[new_columns], expected.obs[new_columns])
    record, reference = adata.uns["celltype"], expected.uns["celltype"]
    assert set(record) == set(reference) >= {"model", "threshold", "celltype_version", "scored_at", "gene_overlap"}
    assert record["model"] == reference["model"] and record["threshold"] == reference["threshold"]
    assert record["gene_overlap"]["n_matched"] == reference["gene_overlap"]["n_matched"] == 50


def test_copy_leaves_the_input_alone_and_a_loaded_predictor_is_reused(bundle_dir, counts_file, tmp_path):
    adata = ad.read_h5ad(counts_file)
    predictor = celltype.load(str(bundle_dir), device="cpu")
    assert isinstance(predictor, Predictor)
    annotated = celltype.annotate(adata, model=predictor, copy=True, top_k=0)
    assert "predicted_cell_type" not in adata.obs and "celltype" not in adata.uns
    assert "predicted_cell_type" in annotated.obs and "top1_label" not in annotated.obs
    annotated.write_h5ad(tmp_path / "annotated.h5ad")  # the provenance record is storable as it is
    assert ad.read_h5ad(tmp_path / "annotated.h5ad").uns["celltype"]["model"]["sha256"] == predictor.bundle.sha256


def test_gene_column_and_dense_matrices(bundle_dir, counts_file):
    adata = ad.read_h5ad(counts_file)
    reference = celltype.annotate(adata.copy(), model=str(bundle_dir), device="cpu")
    renamed = ad.AnnData(adata.X.toarray(), obs=adata.obs.copy(), var=pd.DataFrame(index=[f"id{i}" for i in range(adata.n_vars)]))
    renamed.var["gene_name"] = list(adata.var_names)
    with pytest.raises(GeneMismatchError, match="gene_column=gene_name"):
        celltype.annotate(renamed, model=str(bundle_dir), device="cpu")
    celltype.annotate(renamed, model=str(bundle_dir), device="cpu", gene_column="gene_name")
    np.testing.assert_array_equal(renamed.obs["confidence"], reference.obs["confidence"])
    assert renamed.uns["celltype"]["gene_overlap"]["identifier"] == "var_names"
