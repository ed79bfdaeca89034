"""The REST service: genes by any identifier the model knows, and answers that say which model made them."""

from __future__ import annotations

import io
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from fastapi.testclient import TestClient

from model.bundle import save_bundle
from model.predict import Predictor
from service.settings import Settings

from .conftest import CLASSES, GENES, assert_client_error, random_bundle, start_client

ENSEMBL = [f"ENSG{i:011d}" for i in range(len(GENES))]


@pytest.fixture(scope="module")
def identifiers_client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    """The app serving a model trained on symbols (var_names) that also recorded ``var['gene_ids']``."""
    directory = tmp_path_factory.mktemp("identifiers") / "bundle"
    save_bundle(random_bundle(GENES, CLASSES, gene_identifiers={"gene_ids": ENSEMBL}), directory)
    client = start_client(Settings(model_uri=str(directory), device="cpu"))
    yield client
    client.__exit__(None, None, None)


def _probabilities(reply: dict) -> np.ndarray:
    return np.array([[p["probabilities"][c] for c in CLASSES] for p in reply["predictions"]])


def test_symbol_and_ensembl_requests_give_identical_probabilities(identifiers_client, counts):
    replies = {}
    for name, genes in {"var_names": GENES, "gene_ids": [f"{g}.7" for g in ENSEMBL]}.items():
        body = {"genes": genes, "cells": counts.tolist(), "return_probabilities": True}
        response = identifiers_client.post("/v1/predict", json=body)
        assert response.status_code == 200, response.text
        replies[name] = response.json()
        assert replies[name]["gene_overlap"]["identifier"] == name
        assert response.headers["X-Celltype-Model-Sha256"] == replies[name]["model"]["bundle_sha256"]
    np.testing.assert_array_equal(_probabilities(replies["gene_ids"]), _probabilities(replies["var_names"]))


def test_invocations_accept_the_alternative_identifiers(identifiers_client, counts):
    body = {"dataframe_split": {"columns": ENSEMBL, "data": counts[:3].tolist()}}
    assert identifiers_client.post("/invocations", json=body).status_code == 200


def _upload(client: TestClient, adata: ad.AnnData, tmp_path: Path, **params: str):
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    files = {"file": ("cells.h5ad", io.BytesIO(path.read_bytes()), "application/octet-stream")}
    return client.post("/v1/predict/h5ad", params=params, files=files)


def test_upload_below_the_overlap_names_the_var_column_that_would_match(identifiers_client, counts, tmp_path):
    adata = ad.AnnData(counts, var={"gene_ids": ENSEMBL})
    adata.var_names = [f"unrelated{i}" for i in range(len(GENES))]
    response = _upload(identifiers_client, adata, tmp_path)
    assert_client_error(response, 422, "'gene_ids' (100% of the model's genes, as its gene_ids)", "gene_column=gene_ids")
    answer = _upload(identifiers_client, adata, tmp_path, gene_column="gene_ids").json()
    assert answer["gene_overlap"]["identifier"] == "gene_ids"


def test_annotated_h5ad_and_csv_answers_carry_provenance(client, predictor: Predictor, counts, tmp_path):
    adata = ad.AnnData(counts)
    adata.var_names = GENES
    response = _upload(client, adata, tmp_path, format="h5ad")
    assert response.status_code == 200, response.text
    digest = predictor.bundle.sha256
    assert response.headers["X-Celltype-Model-Sha256"] == digest
    (tmp_path / "answer.h5ad").write_bytes(response.content)
    record = ad.read_h5ad(tmp_path / "answer.h5ad").uns["celltype"]
    assert record["model"]["sha256"] == digest and record["model"]["uri"]
    assert record["threshold"] == pytest.approx(predictor.threshold)
    assert {"celltype_version", "scored_at"} <= set(record)
    assert record["gene_overlap"]["identifier"] == "var_names" and record["gene_overlap"]["n_matched"] == len(GENES)
    csv_answer = _upload(client, adata, tmp_path, format="csv")
    assert csv_answer.headers["X-Celltype-Model-Sha256"] == digest
