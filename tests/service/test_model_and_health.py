"""GET /health/*, /v1/model, /v1/model/genes and the OpenAPI document."""

from __future__ import annotations

from .conftest import CLASSES, GENES, assert_client_error, predict_body, random_counts, start_client


def test_live_and_ready(client, predictor):
    assert client.get("/health/live").json() == {"status": "alive"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["model"]["bundle_sha256"] == predictor.bundle.sha256


def test_without_a_model_the_service_is_live_but_not_ready():
    from service.settings import Settings

    client = start_client(Settings(model_uri=None, device="cpu"))
    try:
        assert client.get("/health/live").status_code == 200
        assert client.get("/health/ready").status_code == 503
        assert_client_error(client.post("/v1/predict", json=predict_body(random_counts(1))), 503, "no model is loaded")
        assert_client_error(client.get("/v1/model"), 503, "no model is loaded")
        assert_client_error(client.post("/v1/admin/reload"), 409, "no model URI is configured")
    finally:
        client.__exit__(None, None, None)


def test_model_description(client, predictor, bundle_dir):
    body = client.get("/v1/model").json()
    assert body["uri"] == str(bundle_dir)
    assert body["bundle_sha256"] == predictor.bundle.sha256
    assert body["labels"] == CLASSES and body["n_genes"] == len(GENES)
    assert body["gene_list_hash"] == predictor.bundle.gene_list_hash
    assert body["holdout_scores"] == {"accuracy": 0.9, "macro_f1": 0.85}
    assert body["train_batches"] == ["lab1", "lab2"] and body["holdout_batches"] == ["lab3"]
    assert body["unknown_threshold"] == predictor.threshold and body["unknown_label"] == "Unknown"
    expected = body["expected_input"]
    assert expected["preprocessing"]["input_kind"] == "counts" and expected["input_kinds"] == ["counts", "lognorm"]
    assert expected["max_cells_per_request"] == 10_000
    assert "application/x-npz" in expected["content_types"]["/v1/predict"]


def test_model_genes(client, predictor):
    assert client.get("/v1/model/genes").json() == {"genes": GENES, "gene_list_hash": predictor.bundle.gene_list_hash}


def test_credentials_in_uris_are_never_shown(make_client, bundle_dir):
    from model.predict import Predictor

    predictor = Predictor.load(bundle_dir, device="cpu")
    predictor.source.update(tracking_uri="postgresql://admin:hunter2@db:5432/mlflow", name="pbmc", version="3")
    body = make_client(predictor=predictor).get("/v1/model").text
    assert "hunter2" not in body and '"name":"pbmc"' in body


def test_openapi_documents_every_route_and_the_request_bodies(client):
    assert client.get("/docs").status_code == 200
    document = client.get("/openapi.json").json()
    assert set(document["paths"]) == {
        "/health/live",
        "/health/ready",
        "/v1/model",
        "/v1/model/genes",
        "/v1/predict",
        "/v1/predict/h5ad",
        "/v1/report",
        "/invocations",
        "/v1/admin/reload",
        "/metrics",
    }
    predict = document["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert set(predict) == {"application/json", "application/x-npz"}
    assert "$ref" not in str(predict) and "csr" in predict["application/json"]["schema"]["properties"]
    assert "multipart/form-data" in document["paths"]["/v1/predict/h5ad"]["post"]["requestBody"]["content"]
    assert "dataframe_split" in str(document["paths"]["/invocations"]["post"]["requestBody"])
