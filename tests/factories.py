"""Objects several test packages need: a classifier with random weights and settled running statistics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from model.bundle import ModelBundle
from model.classifier import CellTypeClassifier, ClassifierConfig
from model.preprocessing import Preprocessing


def random_bundle(
    genes: Sequence[str],
    classes: Sequence[str],
    *,
    seed: int = 0,
    norm: str = "batchrenorm",
    settle_rows: int = 32,
    input_mean_scale: float = 1.0,
    **bundle_fields: Any,
) -> ModelBundle:
    """A bundled classifier (hidden 16-8) with random weights and non-trivial running statistics.

    Five train-mode forwards of ``settle_rows`` random rows settle the norm layers' statistics; the
    per-gene input scaling is random too. ``bundle_fields`` (temperature, unknown_threshold,
    metadata, ...) go to :class:`ModelBundle`.
    """
    torch.manual_seed(seed)
    config = ClassifierConfig(n_genes=len(genes), n_classes=len(classes), hidden_sizes=(16, 8), norm=norm)
    model = CellTypeClassifier(config)
    model.train()
    with torch.no_grad():
        for _ in range(5):
            model(torch.randn(settle_rows, len(genes)) * 2 + 1)
    model.set_input_scaling(torch.rand(len(genes)) * input_mean_scale, torch.rand(len(genes)) + 0.5)
    return ModelBundle.from_model(
        model, genes=list(genes), classes=list(classes), preprocessing=Preprocessing(), **bundle_fields
    )
