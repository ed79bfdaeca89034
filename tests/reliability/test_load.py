"""A bounded loopback load against a real ``celltype serve`` process: no errors, memory flat."""

from __future__ import annotations

import pytest

from benchmarks.reliability.harness import Service
from benchmarks.reliability.inputs import gene_names, predict_body
from benchmarks.reliability.load import run_load
from tests.reliability.conftest import N_GENES

CLIENTS = 32
DURATION_S = 5.0
CELLS_PER_REQUEST = 50


@pytest.mark.slow
def test_32_clients_for_5_seconds_get_only_200s_and_memory_stays_flat(live_service: Service) -> None:
    """Every request is answered 200; latency and throughput are recorded; RSS grows by less than 64 MB."""
    body = predict_body(gene_names(N_GENES), CELLS_PER_REQUEST)

    result = run_load(
        live_service, body, clients=CLIENTS, duration_s=DURATION_S, cells_per_request=CELLS_PER_REQUEST
    )

    print(result)
    assert result.errors == 0, result.statuses
    assert result.requests >= CLIENTS, result
    assert 0 < result.p50_ms <= result.p99_ms < 10_000, result
    assert result.rss_end_mb - result.rss_start_mb < 64, result
