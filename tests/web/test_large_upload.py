"""A 50,000-cell file through ``/v1/report`` with the default limits (slow)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.web.report import MAP_MAX_POINTS
from tests.web.conftest import cells_h5ad

N_CELLS = 50_000


@pytest.mark.slow
def test_fifty_thousand_cells(web_client: Callable[..., TestClient], tmp_path: Path) -> None:
    client = web_client()
    content = cells_h5ad(tmp_path / "large.h5ad", N_CELLS).read_bytes()
    started = time.perf_counter()
    answer = client.post("/v1/report", files={"file": ("large.h5ad", content)})
    elapsed = time.perf_counter() - started
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["n_cells"] == N_CELLS and len(report["cells"]["cell_id"]) == N_CELLS
    assert report["map"]["n_points"] == MAP_MAX_POINTS and report["map"]["subsampled"]
    assert max(report["map"]["cell"]) < N_CELLS
    assert sum(row["count"] for row in report["counts"]) == N_CELLS
    assert elapsed < 30, f"50,000 cells took {elapsed:.1f} s"
    print(f"50,000 cells: {len(content) / 1e6:.1f} MB upload, {len(answer.content) / 1e6:.1f} MB report, {elapsed:.1f} s")
