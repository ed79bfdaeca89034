"""``/v1/admin/reload`` while the registry is unreachable: the old model keeps serving."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.reliability.reload_faults import reload_with_registry_down
from tests.conftest import MlflowStore


@pytest.mark.slow
@pytest.mark.integration
def test_reload_with_the_registry_unreachable_keeps_the_old_model(
    mlflow_server: MlflowStore, bundle_cache: Path, tmp_path: Path
) -> None:
    """A service on ``models:/NAME@champion`` behind a cut connection to the (PostgreSQL-backed) MLflow
    server: reload answers 502 saying the old model keeps serving, predictions stay those of version 1;
    once the connection is back the reload swaps in version 2."""
    outcome = reload_with_registry_down(tmp_path, server_uri=mlflow_server.uri)

    assert outcome.passed, outcome.detail
    assert outcome.numbers["reload_status_while_down"] == 502
    assert outcome.numbers["reload_status_after_recovery"] == 200
