"""Hostile HTTP input against a real ``celltype serve``: oversized bodies, hostile file names, API keys."""

from __future__ import annotations

from pathlib import Path

import httpx

from benchmarks.reliability.harness import Service
from benchmarks.reliability.hostile_http import (
    api_key_enforced,
    oversized_bodies_cut_off,
    upload_names_sanitized,
)
from benchmarks.reliability.inputs import gene_names, predict_body
from tests.reliability.conftest import BODY_LIMIT, N_GENES


def test_oversized_bodies_are_refused_early_without_exhausting_memory(live_service: Service) -> None:
    """256 MB streamed at each body-taking route (chunked, and with a declared length): 413 after at most
    the 8 MiB limit plus a little, and the server's RSS stays far below the body size."""
    outcome = oversized_bodies_cut_off(live_service, total_bytes=256 * 1024 * 1024, limit_bytes=BODY_LIMIT)

    assert outcome.passed, outcome.detail
    assert {case["status"] for case in outcome.numbers["cases"]} == {413}
    assert max(case["mb_sent"] for case in outcome.numbers["cases"]) < 40
    assert outcome.numbers["rss_peak_mb"] - outcome.numbers["rss_start_mb"] < 100


def test_hostile_upload_file_names_never_reach_the_file_system_or_headers(
    live_service: Service, tmp_path: Path
) -> None:
    """``../`` names, absolute paths, backslashes, CR/LF and NUL in the multipart file name are harmless."""
    outcome = upload_names_sanitized(live_service, gene_names(N_GENES), tmp_path)

    assert outcome.passed, outcome.detail
    assert outcome.numbers["names_tried"] == 5


def test_missing_or_wrong_api_keys_get_401(live_service: Service) -> None:
    """401 on every protected route without the key or with a near miss or a key of another length.
    (The timing comparison of wrong keys is judged by ``python -m benchmarks.reliability``.)"""
    outcome = api_key_enforced(live_service, rounds=50, check_timing=False)

    assert outcome.passed, outcome.detail
    print(outcome.numbers["median_us"])


def test_the_right_key_in_either_header_is_accepted(live_service: Service) -> None:
    """``Authorization: Bearer KEY`` and ``X-API-Key: KEY`` both work; a Bearer token of another scheme does not."""
    body = predict_body(gene_names(N_GENES), 3)
    key = live_service.api_key
    answers = [
        httpx.post(
            f"{live_service.url}/v1/predict",
            content=body,
            headers={**headers, "Content-Type": "application/json"},
        )
        for headers in (
            {"Authorization": f"Bearer {key}"},
            {"X-API-Key": key},
            {"Authorization": f"Basic {key}"},
        )
    ]

    assert [answer.status_code for answer in answers] == [200, 200, 401]
