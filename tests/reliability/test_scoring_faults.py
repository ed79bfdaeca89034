"""``celltype score`` killed mid-way: nothing that looks complete is left, and ``--resume`` finishes it identically."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.reliability.scoring_faults import kill_scoring_and_resume


@pytest.mark.slow
def test_sigkill_mid_way_leaves_no_output_and_resume_writes_identical_bytes(tmp_path: Path) -> None:
    """30,000 cells in 15 chunks; SIGKILL after the first finished chunk: no file at the output path, the
    finished chunks kept hidden beside it; ``--resume`` writes the same CSV bytes as an uninterrupted run."""
    outcome = kill_scoring_and_resume(tmp_path, n_cells=30_000, chunk_size=2_000)

    assert outcome.passed, outcome.detail
    assert 1 <= outcome.numbers["chunks_done_at_kill"] < outcome.numbers["chunks"] == 15
