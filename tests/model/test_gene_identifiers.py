"""Any gene identifier the training data carried: matching, recording in the bundle, and the error's hints."""

from __future__ import annotations

import json

import anndata
import numpy as np
import pandas as pd
import pytest

from model.bundle import MANIFEST_FILE, load_bundle, save_bundle
from model.errors import BundleError, GeneMismatchError
from model.genes import align_best, identifier_columns, matching_columns
from model.predict import Predictor
from tests.factories import CLASSES, random_bundle
from training.data import bundled_dataset

SYMBOLS = ["CD3E", "MS4A1", "LYZ", "NKG7"]
ENSEMBL = ["ENSG00000198851", "ENSG00000156738", "ENSG00000090382", "ENSG00000105374"]


def test_best_identifier_set_wins_and_is_reported():
    identifiers = {"var_names": SYMBOLS, "gene_ids": ENSEMBL}
    alignment = align_best(["ensg00000156738.4", "ENSG00000198851", "ENSG00000090382", "other"], identifiers)
    assert alignment.identifier == "gene_ids"
    np.testing.assert_array_equal(alignment.source_index, [1, 0, 2, -1])
    assert alignment.missing == ("NKG7",)  # missing genes are named by the model's var_names
    assert alignment.report()["identifier"] == "gene_ids"
    assert align_best(SYMBOLS, identifiers).identifier == "var_names"


def test_too_little_overlap_lists_every_identifier_of_the_model():
    with pytest.raises(GeneMismatchError, match="2 identifiers.*gene_ids: 'ENSG00000198851'"):
        align_best(["X1", "X2", "CD3E"], {"var_names": SYMBOLS, "gene_ids": ENSEMBL})


def test_identifier_columns_keep_unique_nonempty_strings_only():
    var = pd.DataFrame(
        {
            "gene_ids": ENSEMBL,
            "same_as_index": SYMBOLS,
            "biotype": ["protein_coding"] * 4,
            "with_blank": ["a", "b", " ", "d"],
            "numbers": [1, 2, 3, 4],
            "case_clash": ["a", "A", "b", "c"],
        },
        index=SYMBOLS,
    )
    assert identifier_columns(var.items(), SYMBOLS) == {"gene_ids": ENSEMBL}


def test_matching_columns_name_the_upload_columns_that_would_match():
    identifiers = {"var_names": SYMBOLS, "gene_ids": ENSEMBL}
    columns = {"ids": ENSEMBL[:3] + ["ENSG0"], "names": ["a", "b", "c", "d"]}
    assert matching_columns(columns, identifiers, 0.5) == [("ids", "gene_ids", 0.75)]


def test_bundle_round_trip_and_old_manifests_without_identifiers(tmp_path):
    bundle = random_bundle(SYMBOLS, CLASSES, gene_identifiers={"gene_ids": ENSEMBL})
    save_bundle(bundle, tmp_path / "new")
    assert load_bundle(tmp_path / "new").gene_identifiers == {"gene_ids": ENSEMBL}
    manifest_path = tmp_path / "new" / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    del manifest["gene_identifiers"]
    manifest_path.write_text(json.dumps(manifest))
    old = load_bundle(tmp_path / "new")
    assert old.gene_identifiers == {}
    assert Predictor(old, device="cpu").align(SYMBOLS).identifier == "var_names"


def test_bundle_refuses_identifiers_that_do_not_name_every_gene():
    with pytest.raises(BundleError, match="naming each of the 4 genes"):
        random_bundle(SYMBOLS, CLASSES, gene_identifiers={"gene_ids": ENSEMBL[:3]})
    with pytest.raises(BundleError, match="names two genes alike"):
        random_bundle(SYMBOLS, CLASSES, gene_identifiers={"gene_ids": ["a", "A", "b", "c"]})


@pytest.fixture(scope="module")
def cellbench_with_symbols() -> anndata.AnnData:
    """The bundled CellBench cells (Ensembl IDs in var_names) with made-up symbols in ``var['gene_symbols']``."""
    adata = anndata.read_h5ad(bundled_dataset())[:40, :300].copy()
    adata.var["gene_symbols"] = [f"SYM{i}" for i in range(adata.n_vars)]
    return adata


def test_symbol_and_ensembl_requests_give_identical_probabilities(cellbench_with_symbols):
    adata = cellbench_with_symbols
    genes = list(adata.var_names[:200])  # the model's genes, by Ensembl ID
    symbols = dict(zip(adata.var_names, adata.var["gene_symbols"], strict=True))
    bundle = random_bundle(genes, CLASSES, gene_identifiers={"gene_symbols": [symbols[g] for g in genes]})
    predictor = Predictor(bundle, device="cpu")
    counts = adata.X.toarray()
    by_ensembl = predictor.annotate(counts, list(adata.var_names))
    by_symbol = predictor.annotate(counts, list(adata.var["gene_symbols"]))
    reordered = np.random.default_rng(0).permutation(adata.n_vars)  # any order works for symbols too
    by_symbol_shuffled = predictor.annotate(counts[:, reordered], list(adata.var["gene_symbols"].iloc[reordered]))
    assert by_ensembl.alignment.identifier == "var_names"
    assert by_symbol.alignment.identifier == "gene_symbols"
    np.testing.assert_array_equal(by_symbol.probabilities, by_ensembl.probabilities)
    np.testing.assert_array_equal(by_symbol_shuffled.probabilities, by_ensembl.probabilities)


def test_the_error_names_the_var_column_that_would_match(cellbench_with_symbols):
    adata = cellbench_with_symbols
    genes = list(adata.var_names[:200])
    predictor = Predictor(random_bundle(genes, CLASSES), device="cpu")
    var = pd.DataFrame({"gene_ids": list(adata.var_names)}, index=list(adata.var["gene_symbols"]))
    with pytest.raises(GeneMismatchError, match=r"'gene_ids' \(100% of the model's genes, as its var_names\).*"
                       r"gene_column=gene_ids \(REST\) or --gene-column gene_ids"):
        predictor.align(list(var.index), var=var)
