"""The service under faults: SIGTERM with requests in flight."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.reliability.service_faults import graceful_shutdown


@pytest.mark.slow
def test_sigterm_lets_requests_in_flight_finish(tmp_path: Path) -> None:
    """Four slow requests admitted, then SIGTERM: all four get complete 200 answers, new connections are
    refused, and the process exits on its own."""
    outcome = graceful_shutdown(tmp_path, n_requests=4, n_cells=1000)

    assert outcome.passed, outcome.detail
    assert outcome.numbers["in_flight_at_sigterm"] >= 1
    assert outcome.numbers["complete_answers"] == 4
    assert outcome.numbers["finished_after_sigterm"] >= 1
