"""The logistic-regression peer: what a careful analyst would fit first."""

from __future__ import annotations

import numpy as np

CLIP = 10.0
"""Standardized values are clipped to ``[-CLIP, CLIP]`` (as CellTypist does)."""


def logistic_regression_fold(train_X: np.ndarray, train_y: np.ndarray, test_X: np.ndarray, seed: int = 0) -> np.ndarray:
    """Predicted labels of ``test_X`` by a multinomial logistic regression fitted on the training cells.

    Both matrices are log1p(CP10k) values over the same genes; each gene is z-scored with the training
    cells' mean and standard deviation (near-constant genes keep scale 1) and clipped.
    """
    from sklearn.linear_model import LogisticRegression

    mean = train_X.mean(axis=0)
    std = train_X.std(axis=0)
    std[std < 1e-3] = 1.0
    model = LogisticRegression(max_iter=300, C=0.1, random_state=seed)
    model.fit(np.clip((train_X - mean) / std, -CLIP, CLIP), train_y)
    return model.predict(np.clip((test_X - mean) / std, -CLIP, CLIP))
