"""Lab-effect augmentation: random gene-wise scale and shift of the model input, during training only.

A lab (protocol, chemistry) distorts each gene's log expression roughly affinely: ``x_lab = a_lab ⊙ z + b_lab``
with a gene-wise factor ``a_lab`` and offset ``b_lab``. :class:`LabEffectAugmenter` simulates new labs by
drawing ``log a ~ N(0, scale²)`` and ``b ~ N(0, shift²)`` per gene and applying them to the log-normalized
model input (clipped at 0, as log expression is never negative):

- ``per_lab``: one draw per (training step, lab): the cells of one lab in a mini-batch share it, so
  the distortion stays a property of the lab, not of a cell;
- ``per_batch``: one draw per mini-batch, shared by all its cells.

Zeros stay zero under the shift (a gene a cell did not detect is not invented), so only ``a`` acts on
them. Inference never augments. Enabled with config keys ``augment_mode``, ``augment_scale``,
``augment_shift`` (``--set augment.mode=per_lab``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

AUGMENT_MODES = ("none", "per_lab", "per_batch")
"""Values of the ``augment_mode`` config key."""


class LabEffectAugmenter:
    """Applies random lab effects to training inputs; call it with a mini-batch's inputs and rows.

    Args:
        batches: the batch (lab) of every row of the training data (indexed by the rows passed in).
        mode: ``per_lab`` or ``per_batch`` (see the module docstring).
        scale: standard deviation of the gene-wise log-scale ``log a``.
        shift: standard deviation of the gene-wise shift ``b`` (log-expression units).
        seed: seed of the draws (the draw of a step is reproducible from it).
    """

    def __init__(
        self, batches: Sequence[str] | np.ndarray, mode: str, scale: float, shift: float, seed: int = 0
    ) -> None:
        if mode not in AUGMENT_MODES or mode == "none":
            raise ValueError(f"mode must be per_lab or per_batch (got {mode!r})")
        if scale < 0 or shift < 0:
            raise ValueError(f"scale and shift must be >= 0 (got {scale}, {shift})")
        self.lab_codes = np.unique(np.asarray(batches).astype(str), return_inverse=True)[1].reshape(-1)
        self.mode = mode
        self.scale = float(scale)
        self.shift = float(shift)
        self.generator = torch.Generator().manual_seed(int(seed))

    def _draw(self, n_genes: int) -> tuple[torch.Tensor, torch.Tensor]:
        log_a = torch.randn(n_genes, generator=self.generator) * self.scale
        b = torch.randn(n_genes, generator=self.generator) * self.shift
        return log_a.exp(), b

    def __call__(self, inputs: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        """``inputs`` (``(n, genes)`` log-normalized) with a random lab effect applied; a new tensor."""
        n, n_genes = inputs.shape
        if self.mode == "per_batch":
            a, b = self._draw(n_genes)
            factors, offsets = a.expand(n, -1), b.expand(n, -1)
        else:
            codes = self.lab_codes[np.asarray(rows, dtype=np.int64)]
            labs, inverse = np.unique(codes, return_inverse=True)
            draws = [self._draw(n_genes) for _ in labs]
            index = torch.from_numpy(inverse.reshape(-1))
            factors = torch.stack([d[0] for d in draws])[index]
            offsets = torch.stack([d[1] for d in draws])[index]
        factors, offsets = factors.to(inputs.device, inputs.dtype), offsets.to(inputs.device, inputs.dtype)
        detected = (inputs > 0).to(inputs.dtype)
        return (inputs * factors + offsets * detected).clamp_min(0.0)


def augmenter_from_config(config: Any, batches: Sequence[str] | np.ndarray) -> LabEffectAugmenter | None:
    """The augmenter a training config asks for (``augment_mode`` etc.), or ``None`` when it is off."""
    mode = getattr(config, "augment_mode", "none")
    if mode == "none":
        return None
    return LabEffectAugmenter(
        batches,
        mode,
        config.augment_scale,
        config.augment_shift,
        seed=int(config.seed) + 7919,
    )
