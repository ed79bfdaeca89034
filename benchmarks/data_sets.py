"""Where the benchmarks find the real multi-lab data sets (``<name>.h5ad``), shared by every benchmark."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "CELLTYPE_DATA_DIR"
"""Environment variable naming the folder of the real ``.h5ad`` sets."""
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "h5ad"
"""``../shared/data/h5ad`` beside the repository."""


def data_directory(cli_value: str | None) -> Path:
    """``--data-dir``, else ``$CELLTYPE_DATA_DIR``, else ``../shared/data/h5ad`` beside the repository."""
    return Path(cli_value or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)
