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

:class:`CellNoiseAugmenter` simulates the per-cell side of technology differences (capture efficiency,
sequencing depth): each detected gene of a cell is dropped (set to 0) with probability ``gene_dropout``,
and each cell's expression is rescaled as ``log1p(f · expm1(x))`` with ``log f ~ N(0, library_scale²)``
(a different library size / size factor). Config keys ``augment_gene_dropout`` and
``augment_library_scale`` (0 = off, the default); it composes with the lab effect.
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


class CellNoiseAugmenter:
    """Per-cell gene dropout and library-size rescaling of log-normalized training inputs.

    Args:
        gene_dropout: probability that a detected gene of a cell is set to 0, in [0, 1).
        library_scale: standard deviation of the per-cell log library-size factor ``log f``.
        seed: seed of the draws.
    """

    def __init__(self, gene_dropout: float, library_scale: float, seed: int = 0) -> None:
        if not 0.0 <= gene_dropout < 1.0:
            raise ValueError(f"gene_dropout must be in [0, 1) (got {gene_dropout})")
        if library_scale < 0:
            raise ValueError(f"library_scale must be >= 0 (got {library_scale})")
        self.gene_dropout = float(gene_dropout)
        self.library_scale = float(library_scale)
        self.generator = torch.Generator().manual_seed(int(seed))

    def state_dict(self) -> dict[str, Any]:
        """The random generator's state (checkpointed, so a resumed run draws the same noise)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.generator.set_state(state["generator"])

    def __call__(self, inputs: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        """``inputs`` (``(n, genes)`` log-normalized) with per-cell dropout and rescaling; a new tensor."""
        n, n_genes = inputs.shape
        out = inputs
        if self.library_scale > 0:
            factors = (torch.randn(n, 1, generator=self.generator) * self.library_scale).exp()
            out = torch.log1p(torch.expm1(out) * factors.to(out.device, out.dtype))
        if self.gene_dropout > 0:
            keep = torch.rand(n, n_genes, generator=self.generator) >= self.gene_dropout
            out = out * keep.to(out.device, out.dtype)
        return out if out is not inputs else inputs.clone()


class ComposedAugmenter:
    """Applies several augmenters in turn (each called with the mini-batch's inputs and rows)."""

    def __init__(self, parts: Sequence[Any]) -> None:
        self.parts = list(parts)

    def state_dict(self) -> dict[str, Any]:
        """Each part's state (parts without one give ``None``)."""
        return {"parts": [p.state_dict() if hasattr(p, "state_dict") else None for p in self.parts]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        for part, saved in zip(self.parts, state["parts"], strict=True):
            if saved is not None:
                part.load_state_dict(saved)

    def __call__(self, inputs: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        """The inputs after every part."""
        for part in self.parts:
            inputs = part(inputs, rows)
        return inputs


def augmenter_from_config(config: Any, batches: Sequence[str] | np.ndarray) -> Any:
    """The augmentation a training config asks for (lab effect and/or cell noise), or ``None`` when off."""
    parts: list[Any] = []
    mode = getattr(config, "augment_mode", "none")
    if mode != "none":
        parts.append(LabEffectAugmenter(batches, mode, config.augment_scale, config.augment_shift,
                                        seed=int(config.seed) + 7919))
    dropout = float(getattr(config, "augment_gene_dropout", 0.0))
    library = float(getattr(config, "augment_library_scale", 0.0))
    if dropout > 0 or library > 0:
        parts.append(CellNoiseAugmenter(dropout, library, seed=int(config.seed) + 104729))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else ComposedAugmenter(parts)
