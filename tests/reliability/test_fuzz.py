"""Fuzzing the service from its OpenAPI schema (schemathesis): no 5xx, every answer as documented."""

from __future__ import annotations

import secrets
from pathlib import Path

from benchmarks.reliability.fuzz import fuzz_app
from service.app import create_app
from service.settings import Settings

ROUTES = {
    "GET /health/live",
    "GET /health/ready",
    "GET /v1/model",
    "GET /v1/model/genes",
    "POST /v1/predict",
    "POST /v1/predict/h5ad",
    "POST /invocations",
    "POST /v1/admin/reload",
    "GET /metrics",
}


def test_generated_requests_get_documented_answers_and_never_a_5xx(random_bundle_dir: Path) -> None:
    """Valid and invalid generated requests to every route: no 5xx, status/content type/body/headers as
    the schema says, invalid input rejected, protected routes refuse requests without the key."""
    key = secrets.token_urlsafe(16)
    app = create_app(Settings(model_uri=str(random_bundle_dir), device="cpu", api_key=key))

    result = fuzz_app(app, max_examples=25, headers={"Authorization": f"Bearer {key}"})

    assert set(result.operations) >= ROUTES, result.operations
    assert result.server_errors == 0, result.statuses
    assert result.failures == []
    assert result.requests >= 200, result.statuses
    assert {200, 422} <= set(result.statuses), result.statuses
