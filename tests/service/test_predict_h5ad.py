"""POST /v1/predict/h5ad: JSON, CSV and annotated-h5ad answers; unsafe or unreadable files refused."""

from __future__ import annotations

import io
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from model.preprocessing import to_model_input

from .conftest import CLASSES, GENES, assert_client_error


@pytest.fixture
def counts(synthetic_adata: ad.AnnData) -> np.ndarray:
    """The synthetic cells' raw counts over the model's genes, dense."""
    return synthetic_adata.X.toarray()


@pytest.fixture
def adata(synthetic_adata: ad.AnnData, counts: np.ndarray) -> ad.AnnData:
    """The synthetic cells with log-normalized values in X (sparse), the counts in a layer, Ensembl-like
    ids as var names and the gene symbols in ``var['symbol']``."""
    synthetic_adata.layers["counts"] = synthetic_adata.X.copy()
    synthetic_adata.X = sp.csr_matrix(to_model_input(counts.copy(), "counts", 1e4))
    synthetic_adata.var["symbol"] = GENES
    synthetic_adata.var_names = [f"ENSG{i:05d}" for i in range(len(GENES))]
    return synthetic_adata


def h5ad_bytes(adata: ad.AnnData, tmp_path: Path) -> bytes:
    path = tmp_path / "upload.h5ad"
    adata.write_h5ad(path)
    return path.read_bytes()


def upload(client, content: bytes, **params):
    return client.post("/v1/predict/h5ad", params=params, files={"file": ("cells.h5ad", content, "application/x-hdf5")})


def test_json_answer_matches_the_predictor(client, predictor, adata, counts, tmp_path):
    response = upload(client, h5ad_bytes(adata, tmp_path), layer="counts", gene_column="symbol", return_probabilities="true")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["input"] == "counts"
    assert [p["cell_id"] for p in body["predictions"]] == list(adata.obs_names)
    probabilities = [[p["probabilities"][c] for c in CLASSES] for p in body["predictions"]]
    np.testing.assert_allclose(probabilities, predictor.predict_proba(counts, GENES), atol=1e-6)


def test_log_normalized_x_is_detected(client, predictor, adata, counts, tmp_path):
    response = upload(client, h5ad_bytes(adata, tmp_path), gene_column="symbol", return_probabilities="true")
    assert response.status_code == 200, response.text
    assert response.json()["input"] == "lognorm"
    probabilities = [[p["probabilities"][c] for c in CLASSES] for p in response.json()["predictions"]]
    np.testing.assert_allclose(probabilities, predictor.predict_proba(counts, GENES), atol=1e-5)


def test_csv_answer(client, predictor, adata, counts, tmp_path):
    response = upload(client, h5ad_bytes(adata, tmp_path), layer="counts", gene_column="symbol", format="csv")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    table = pd.read_csv(io.StringIO(response.text))
    assert list(table.columns) == ["cell_id", "predicted_cell_type", "confidence", "unknown_reason"]
    assert table["cell_id"].tolist() == list(adata.obs_names)
    annotation = predictor.annotate(counts, GENES)
    assert table["predicted_cell_type"].tolist() == annotation.labels.tolist()
    assert table["unknown_reason"].fillna("").tolist() == annotation.unknown_reason.tolist()


def test_csv_with_probabilities(client, adata, tmp_path):
    response = upload(client, h5ad_bytes(adata, tmp_path), layer="counts", gene_column="symbol", format="csv", return_probabilities="true")
    table = pd.read_csv(io.StringIO(response.text))
    assert list(table.columns)[4:] == [f"probability:{c}" for c in CLASSES]
    np.testing.assert_allclose(table.iloc[:, 4:].sum(axis=1), 1.0, atol=1e-5)


def test_annotated_h5ad_answer_keeps_the_data_and_adds_obs_columns(client, predictor, adata, counts, tmp_path):
    response = upload(client, h5ad_bytes(adata, tmp_path), layer="counts", gene_column="symbol", format="h5ad")
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"] == 'attachment; filename="cells.annotated.h5ad"'
    path = tmp_path / "annotated.h5ad"
    path.write_bytes(response.content)
    annotated = ad.read_h5ad(path)
    annotation = predictor.annotate(counts, GENES)
    assert annotated.obs["predicted_cell_type"].astype(str).tolist() == annotation.labels.tolist()
    np.testing.assert_allclose(annotated.obs["confidence"].to_numpy(), annotation.confidence, atol=1e-7)
    assert annotated.obs["unknown_reason"].astype(str).tolist() == annotation.unknown_reason.tolist()
    assert (annotated.layers["counts"] != adata.layers["counts"]).nnz == 0
    assert list(annotated.var["symbol"]) == GENES


def test_dense_x_with_gene_symbols_as_var_names(client, predictor, synthetic_adata, counts, tmp_path):
    synthetic_adata.X = counts
    response = upload(client, h5ad_bytes(synthetic_adata, tmp_path), input="counts")
    assert response.status_code == 200, response.text
    assert [p["label"] for p in response.json()["predictions"]] == predictor.predict(counts, GENES).tolist()


@pytest.mark.parametrize(
    ("params", "status", "fragment"),
    [
        ({"layer": "spliced"}, 422, "no layer 'spliced'"),
        ({"gene_column": "gene_ids"}, 422, "var has no column 'gene_ids'"),
        ({}, 422, "were found in the input"),
        ({"layer": "counts", "gene_column": "symbol", "input": "lognorm"}, 422, "raw counts"),
        ({"format": "xlsx"}, 422, ""),
    ],
)
def test_bad_choices_are_client_errors(client, adata, tmp_path, params, status, fragment):
    response = upload(client, h5ad_bytes(adata, tmp_path), **params)
    assert response.status_code == status, response.text
    assert fragment in str(response.json()["detail"])


def test_files_that_are_not_h5ad_are_400(client):
    assert_client_error(upload(client, b"this is not hdf5"), 400, "not an HDF5")


def test_hdf5_files_that_anndata_cannot_read_are_422(client, tmp_path):
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as handle:
        handle["values"] = np.arange(5)
    assert_client_error(upload(client, path.read_bytes()), 422, "could not be read by anndata")


def test_files_reaching_outside_themselves_are_refused(client, adata, tmp_path):
    path = tmp_path / "linked.h5ad"
    adata.write_h5ad(path)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"x" * 64)
    with h5py.File(path, "a") as handle:
        handle["uns/leak"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "/data")
        handle.create_dataset("uns/raw_file", shape=(64,), dtype="u1", external=[(str(secret), 0, 64)])
    assert_client_error(upload(client, path.read_bytes()), 422, "external link", "external file")


def test_files_expanding_beyond_the_limit_are_413(make_client, tmp_path):
    adata = ad.AnnData(X=np.zeros((2000, len(GENES)), dtype=np.float32), var=pd.DataFrame(index=GENES))
    path = tmp_path / "zeros.h5ad"
    adata.write_h5ad(path, compression="gzip")
    client = make_client(max_expanded_bytes=100_000)
    assert path.stat().st_size < 100_000
    assert_client_error(upload(client, path.read_bytes()), 413, "expands to")


def test_too_many_cells_is_413(make_client, adata, tmp_path):
    client = make_client(max_cells_per_request=10)
    assert_client_error(upload(client, h5ad_bytes(adata, tmp_path), layer="counts"), 413, "at most 10")


def test_missing_file_field_and_wrong_content_type(client, adata, tmp_path):
    response = client.post("/v1/predict/h5ad", files={"upload": ("x.h5ad", h5ad_bytes(adata, tmp_path))})
    assert_client_error(response, 422, "field named 'file'")
    response = client.post("/v1/predict/h5ad", content=h5ad_bytes(adata, tmp_path), headers={"content-type": "application/x-hdf5"})
    assert_client_error(response, 415, "multipart/form-data")
