"""A crash is never one request's problem (issue 13): SIGKILL to the ``celltype serve --workers 2`` worker
answering a request, and the service goes on answering while the supervisor replaces it."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.reliability.worker_crash import kill_worker_mid_request

from .conftest import N_GENES


@pytest.mark.slow
def test_a_worker_killed_mid_request_is_replaced_and_the_service_keeps_answering(
    random_bundle_dir: Path, tmp_path: Path
) -> None:
    outcome = kill_worker_mid_request(random_bundle_dir, tmp_path, n_genes=N_GENES, heavy_cells=5000, probes=30)

    assert outcome.passed, (outcome.detail, outcome.numbers)
    assert outcome.numbers["probes_answered"] == 30
    assert outcome.numbers["killed"] not in outcome.numbers["workers_after"]
