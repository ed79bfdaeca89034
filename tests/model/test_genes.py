"""Tests for aligning input genes to a model's genes."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from model.errors import GeneMismatchError
from model.genes import align_genes, gene_key, gene_list_hash

MODEL = ["CD3E", "MS4A1", "LYZ", "ENSG00000105383"]


def test_identity_alignment():
    alignment = align_genes(MODEL, MODEL)
    assert alignment.is_identity and alignment.overlap == 1.0


def test_any_order_extra_genes_case_and_ensembl_version():
    alignment = align_genes(["extra", "lyz", "ENSG00000105383.14", "CD3E", "ms4a1"], MODEL)
    np.testing.assert_array_equal(alignment.source_index, [3, 4, 1, 2])
    assert alignment.report()["n_ignored"] == 1 and not alignment.is_identity


def test_missing_genes_are_reported():
    alignment = align_genes(["CD3E", "LYZ", "MS4A1"], MODEL)
    assert alignment.missing == ("ENSG00000105383",)
    assert alignment.source_index[3] == -1
    report = alignment.report()
    assert report["overlap"] == 0.75 and report["missing_examples"] == ["ENSG00000105383"]


def test_low_overlap_explains_identifier_mismatch():
    with pytest.raises(GeneMismatchError, match=r"only 1 of the model's 4 genes .*symbols vs Ensembl"):
        align_genes(["CD3E", "ENSG0001", "ENSG0002"], MODEL)


def test_duplicates_and_ambiguous_case_are_refused():
    with pytest.raises(GeneMismatchError, match="more than once"):
        align_genes(["CD3E", "CD3E", "LYZ"], MODEL)
    with pytest.raises(GeneMismatchError, match="when case is ignored"):
        align_genes(["Lyz", "lyz", "CD3E", "MS4A1"], MODEL)


def test_empty_gene_list_is_refused():
    with pytest.raises(GeneMismatchError, match="no gene names"):
        align_genes([], MODEL)


def test_gene_key_and_hash():
    assert gene_key(" cd3e ") == "CD3E"
    assert gene_key("ENSMUSG00000000001.4") == "ENSMUSG00000000001"
    assert gene_list_hash(MODEL) != gene_list_hash(list(reversed(MODEL)))


@given(st.permutations(MODEL + ["X1", "X2"]))
def test_alignment_recovers_any_permutation(order):
    alignment = align_genes(order, MODEL)
    assert [order[i] for i in alignment.source_index] == MODEL
