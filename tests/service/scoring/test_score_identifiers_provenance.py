"""``celltype score``: --gene-column, the var columns named when genes do not match, provenance in every
output format, and a progress bar that counts whole cells at the summary's rate."""

from __future__ import annotations

import json

import anndata as ad
import pyarrow.parquet as pq
import pytest

from model.bundle import load_bundle

from .files import N_CELLS, make_counts, write_h5ad


@pytest.fixture(scope="module")
def ids_file(tmp_path_factory):
    """The counts with made-up names in var_names and the model's gene names in ``var['gene_name']``."""
    X, genes = make_counts()
    path = write_h5ad(tmp_path_factory.mktemp("data") / "ids.h5ad", X, genes)
    adata = ad.read_h5ad(path)
    adata.var["gene_name"] = list(adata.var_names)
    adata.var_names = [f"id{i}" for i in range(adata.n_vars)]
    adata.write_h5ad(path)
    return path


def test_too_few_genes_names_the_column_and_gene_column_scores(celltype, bundle_dir, ids_file, tmp_path, capsys):
    assert celltype(ids_file, "--model", bundle_dir, "--out", tmp_path / "a.csv", "--no-progress") == 2
    error = capsys.readouterr().err
    assert "'gene_name' (83% of the model's genes, as its var_names)" in error and "--gene-column gene_name" in error
    out = tmp_path / "a.h5ad"
    assert celltype(ids_file, "--model", bundle_dir, "--out", out, "--gene-column", "gene_name", "--no-progress") == 0
    assert "50/60 model genes found (by var_names)" in capsys.readouterr().out
    record = ad.read_h5ad(out).uns["celltype"]
    bundle = load_bundle(bundle_dir)
    assert record["model"]["sha256"] == bundle.sha256 and record["model"]["uri"] == str(bundle_dir)
    assert record["threshold"] == pytest.approx(bundle.unknown_threshold)
    assert record["gene_overlap"]["n_matched"] == 50 and record["gene_overlap"]["identifier"] == "var_names"
    assert record["celltype_version"] and record["scored_at"]


def test_a_missing_gene_column_is_a_one_line_error(celltype, bundle_dir, ids_file, tmp_path, capsys):
    assert celltype(ids_file, "--model", bundle_dir, "--out", tmp_path / "a.csv", "--gene-column", "nope") == 2
    assert "var has no column 'nope'" in capsys.readouterr().err


def test_table_outputs_carry_provenance(celltype, bundle_dir, ids_file, tmp_path):
    common = ("--model", bundle_dir, "--gene-column", "gene_name", "--no-progress")
    assert celltype(ids_file, *common, "--out", tmp_path / "t.parquet") == 0
    record = json.loads(pq.read_schema(tmp_path / "t.parquet").metadata[b"celltype"])
    assert record["model"]["sha256"] == load_bundle(bundle_dir).sha256
    assert record["gene_overlap"][str(ids_file)]["n_matched"] == 50
    assert celltype(ids_file, *common, "--out", tmp_path / "t.csv") == 0
    sidecar = json.loads((tmp_path / "t.csv.json").read_text())
    assert {k: v for k, v in sidecar.items() if k != "scored_at"} == {k: v for k, v in record.items() if k != "scored_at"}


def test_the_progress_bar_counts_whole_cells(celltype, bundle_dir, ids_file, tmp_path, capsys):
    assert celltype(ids_file, "--model", bundle_dir, "--gene-column", "gene_name", "--out", tmp_path / "p.csv") == 0
    err = capsys.readouterr().err
    assert f"{N_CELLS}/{N_CELLS}" in err and f"{N_CELLS}.0" not in err
