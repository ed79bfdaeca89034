"""Request ids, JSON logs without payloads, Prometheus metrics, and the catch-all error handler."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request

from service.app import internal_error_handler
from service.observability import JsonFormatter, configure_logging

from .conftest import predict_body, random_counts


def samples(client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_request_id_is_echoed_or_generated(client):
    assert client.get("/health/live", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    generated = client.get("/health/live").headers["x-request-id"]
    assert len(generated) == 32
    unsafe = client.get("/health/live", headers={"X-Request-ID": "bad id\twith spaces" + "x" * 200})
    assert unsafe.headers["x-request-id"] != "bad id\twith spaces" and len(unsafe.headers["x-request-id"]) == 32
    error = client.post("/v1/predict", content=b"{", headers={"content-type": "application/json", "X-Request-ID": "r-9"})
    assert error.headers["x-request-id"] == "r-9" and error.json()["request_id"] == "r-9"


def test_metrics_count_requests_latency_cells_errors_and_the_model(make_client, predictor):
    client = make_client()
    for _ in range(2):
        assert client.post("/v1/predict", json=predict_body(random_counts(7))).status_code == 200
    client.post("/v1/predict", json=predict_body(random_counts(1) * 0.5))
    client.post("/v1/predict", content=b"x", headers={"content-type": "text/plain"})
    values = samples(client)
    assert values["celltype_http_requests_total", (("method", "POST"), ("route", "/v1/predict"), ("status", "200"))] == 2
    assert values["celltype_http_requests_total", (("method", "POST"), ("route", "/v1/predict"), ("status", "422"))] == 1
    assert values["celltype_http_request_duration_seconds_count", (("route", "/v1/predict"),)] == 4
    assert values["celltype_cells_predicted_total", (("route", "/v1/predict"),)] == 14
    assert values["celltype_errors_total", (("kind", "input_values"),)] == 1
    assert values["celltype_errors_total", (("kind", "unsupported_media_type"),)] == 1
    model = {labels: value for (name, labels), value in values.items() if name == "celltype_model_info"}
    assert list(model.values()) == [1.0]
    assert dict(next(iter(model)))["bundle_sha256"] == predictor.bundle.sha256


def test_unknown_routes_are_counted_under_one_label(make_client):
    client = make_client()
    for path in ("/nope", "/nope/2", "/v2/anything"):
        assert client.get(path).status_code == 404
    assert samples(client)["celltype_http_requests_total", (("method", "GET"), ("route", "unmatched"), ("status", "404"))] == 3


def test_access_log_is_json_with_request_id_and_no_payload(make_client, capsys):
    client = make_client()
    configure_logging("info")
    try:
        secret_gene = "GENE_THAT_MUST_NOT_BE_LOGGED"
        body = predict_body(random_counts(1), cell_ids=[secret_gene])
        assert client.post("/v1/predict", json=body, headers={"X-Request-ID": "log-me"}).status_code == 200
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    finally:
        logging.getLogger().handlers.clear()
    access = [line for line in lines if line.get("logger") == "celltype.access" and line.get("request_id") == "log-me"]
    assert len(access) == 1
    entry = access[0]
    assert entry["status"] == 200 and entry["route"] == "/v1/predict" and entry["method"] == "POST"
    assert entry["duration_ms"] > 0 and entry["level"] == "info" and entry["ts"].endswith("Z")
    assert all(secret_gene not in json.dumps(line) for line in lines)


def test_json_formatter_keeps_extras_and_errors():
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed %s", ("here",), None)
    record.request_id = "rid"
    record.model = {"version": "3"}
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "failed here" and entry["request_id"] == "rid" and entry["model"] == {"version": "3"}
    assert "ValueError: boom" in entry["error"]


def test_catch_all_handler_answers_json_500_without_a_traceback(client, caplog):
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/x",
        "headers": [],
        "app": client.app,
        "state": {"request_id": "rid-500"},
    }
    try:
        raise RuntimeError("secret internals")
    except RuntimeError as exc:
        error = exc
    with caplog.at_level(logging.ERROR):
        response = asyncio.run(internal_error_handler(Request(scope), error))
    body = json.loads(response.body)
    assert response.status_code == 500 and body["request_id"] == "rid-500"
    assert "secret internals" not in response.body.decode() and "Traceback" not in response.body.decode()
    assert response.headers["x-request-id"] == "rid-500"
    assert "secret internals" in caplog.text


@pytest.mark.parametrize("level", ["debug", "WARNING"])
def test_configure_logging_sets_the_level(level):
    try:
        configure_logging(level)
        root = logging.getLogger()
        assert root.level == logging.getLevelName(level.upper())
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
        assert logging.getLogger("uvicorn.error").propagate
    finally:
        logging.getLogger().handlers.clear()
        logging.getLogger().setLevel(logging.WARNING)
