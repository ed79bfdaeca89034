"""The optional API key: both header forms, wrong and missing keys, health stays open."""

from __future__ import annotations

import pytest

from service.settings import Settings

from .conftest import assert_client_error, predict_body, random_counts, start_client

KEY = "s3cret-key-\u00e9"


@pytest.fixture(scope="module")
def protected(bundle_dir):
    client = start_client(Settings(model_uri=str(bundle_dir), device="cpu", api_key=KEY))
    yield client
    client.__exit__(None, None, None)


PROTECTED = [
    ("get", "/v1/model", None),
    ("get", "/v1/model/genes", None),
    ("post", "/v1/predict", predict_body(random_counts(1))),
    ("post", "/invocations", {"instances": random_counts(1).tolist()}),
    ("get", "/metrics", None),
    ("post", "/v1/admin/reload", None),
]


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
def test_missing_key_is_401(protected, method, path, body):
    response = getattr(protected, method)(path, **({"json": body} if body else {}))
    assert_client_error(response, 401, "needs an API key")
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {KEY}"}, {"X-API-Key": KEY}])
def test_either_header_form_is_accepted(protected, method, path, body, headers):
    encoded = {name: value.encode() for name, value in headers.items()}
    response = getattr(protected, method)(path, headers=encoded, **({"json": body} if body else {}))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer wrong"},
        {"X-API-Key": "wrong"},
        {"Authorization": "Basic " + KEY},
        {"Authorization": "Bearer " + KEY[:-1]},
        {"X-API-Key": KEY + "x"},
    ],
)
def test_wrong_keys_are_401(protected, headers):
    encoded = {name: value.encode() for name, value in headers.items()}
    response = protected.get("/v1/model", headers=encoded)
    assert response.status_code == 401
    assert "not valid" in response.json()["detail"] or "needs an API key" in response.json()["detail"]


@pytest.mark.parametrize("path", ["/health/live", "/health/ready"])
def test_health_needs_no_key(protected, path):
    assert protected.get(path).status_code == 200


def test_no_key_configured_means_open(client):
    assert client.get("/v1/model").status_code == 200


def test_docs_show_both_schemes(protected):
    schemes = protected.get("/openapi.json").json()["components"]["securitySchemes"]
    assert {scheme["type"] for scheme in schemes.values()} == {"http", "apiKey"}
