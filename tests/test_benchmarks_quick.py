"""``python -m benchmarks --quick`` runs end to end and writes its report section and plots."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.__main__ import main
from benchmarks.data_sets import DEFAULT_DATA_DIR


@pytest.mark.slow
def test_quick_evidence_report(tmp_path) -> None:
    if not (DEFAULT_DATA_DIR / "scclassify_pancreas.h5ad").is_file():
        pytest.skip(f"real data sets not found in {DEFAULT_DATA_DIR}")
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n<!-- other:start -->\nkept\n<!-- other:end -->\n")
    results = tmp_path / "quick.json"
    args = ["--quick", "--no-celltypist", "--results", str(results), "--doc", str(doc), "--img-dir", str(tmp_path / "img")]
    assert main(args) == 0
    text = doc.read_text()
    assert "kept" in text and "<!-- evidence:start -->" in text and "| lab_homogeneous | batchrenorm |" in text
    assert (tmp_path / "img" / "quick_lobo_norms.png").is_file()
    before = results.read_text()
    assert main(args) == 0 and results.read_text() == before  # a rerun resumes: nothing left to do
    assert Path(tmp_path / "img" / "quick_synthetic_lab_effect.png").is_file()
