"""The statistic every evidence table and conclusion is built on: per-seed means over leave-one-batch-out folds.

A seed is the unit of "mean ± std": each seed's folds are averaged first, and only seeds that finished
every fold of the rows count, so an interrupted seed never biases a cell of the grid.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np


def per_seed_means(rows: list[dict[str, Any]], metric: str, part: str) -> list[float]:
    """Mean of ``result[part][metric]`` over folds, per seed, only of seeds that finished every fold of ``rows``."""
    by_seed: dict[int, dict[str, float]] = defaultdict(dict)
    for row in rows:
        value = row["result"].get(part, {}).get(metric)
        if value is not None:
            by_seed[row["seed"]][row.get("holdout", "")] = value
    folds = max((len(v) for v in by_seed.values()), default=0)
    return [float(np.mean(list(v.values()))) for _, v in sorted(by_seed.items()) if len(v) == folds]
