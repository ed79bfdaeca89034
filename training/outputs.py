"""Writing a finished :class:`~training.pipeline.TrainingRun` to its output directory.

The layout (the contract in docs/internal/TEAM.md): ``OUT/bundle/``, ``config.json``, ``history.json``,
``metrics.json``, ``data_report.json`` and ``reports/`` (plots and per-class tables); ``checkpoints/``
are written by the loop while it trains. :mod:`training.tracking` publishes such a directory to MLflow.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from model.bundle import save_bundle
from training.pipeline import TrainingRun
from training.plots import write_split_reports
from training.strict_json import write_json


def _file_name(text: str) -> str:
    """``text`` as a safe file-name stem (a batch name may hold any character)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "batch"


def write_run(run: TrainingRun, out_dir: str | Path, data_report: dict[str, Any] | None = None) -> Path:
    """Write a run's output directory (the contract in docs/internal/TEAM.md) and return the bundle path.

    ``OUT/bundle/``, ``config.json``, ``history.json``, ``metrics.json``, ``reports/`` (PNG confusion
    matrices and reliability diagrams, per-class CSVs for validation and each held-out batch) and
    ``data_report.json``. ``checkpoints/`` were written during training.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bundle_dir = out / "bundle"
    save_bundle(run.bundle, bundle_dir)
    write_json(out / "config.json", run.config.to_dict())
    write_json(out / "history.json", run.fit.history)
    write_json(out / "metrics.json", run.metrics)
    write_json(out / "data_report.json", data_report or {})
    reports = out / "reports"
    reports.mkdir(exist_ok=True)
    for name, report in run.reports.items():
        write_split_reports(reports, _file_name(name), report["scores"], report["confidence"], report["correct"])
    return bundle_dir
