"""The cell-type classifier: per-gene standardization, then Linear → Norm → activation → dropout blocks."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from model.norms import NORM_LAYERS, create_norm

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}
"""Activation functions a config may name."""


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything needed to rebuild a classifier's architecture; stored inside every bundle.

    Args:
        n_genes: input width (the model's gene list).
        n_classes: number of cell types.
        hidden_sizes: width of each hidden block.
        norm: normalization layer of the hidden blocks (see :data:`model.norms.NORM_LAYERS`).
        activation: one of :data:`ACTIVATIONS`.
        dropout: dropout after each hidden block's activation.
        input_dropout: dropout on the standardized input genes (gene dropout; regularizes against
            genes a lab did not detect).
        norm_momentum: weight of a new batch in the norm layers' running statistics.
        norm_eps: epsilon of the norm layers.
        input_clip: standardized inputs are clipped to ``[-input_clip, input_clip]``.
    """

    n_genes: int
    n_classes: int
    hidden_sizes: tuple[int, ...] = (256, 128)
    norm: str = "batchrenorm"
    activation: str = "relu"
    dropout: float = 0.2
    input_dropout: float = 0.0
    norm_momentum: float = 0.01
    norm_eps: float = 1e-5
    input_clip: float = 10.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
        if self.n_genes < 1 or self.n_classes < 2:
            raise ValueError(f"need n_genes >= 1 and n_classes >= 2, got {self.n_genes} and {self.n_classes}")
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise ValueError(f"hidden_sizes must be positive widths, got {self.hidden_sizes}")
        if self.norm not in NORM_LAYERS:
            raise ValueError(f"unknown norm {self.norm!r}; choose one of {', '.join(NORM_LAYERS)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        for name in ("dropout", "input_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if not self.input_clip > 0:
            raise ValueError(f"input_clip must be positive, got {self.input_clip}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        data = asdict(self)
        data["hidden_sizes"] = list(self.hidden_sizes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassifierConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys are an error (a newer bundle format)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown classifier config keys {unknown}; is this bundle from a newer celltype?")
        return cls(**data)


class CellTypeClassifier(nn.Module):
    """An MLP over log-normalized expression that outputs one logit per cell type.

    The input is standardized per gene with statistics fixed at training time (buffers ``input_mean``
    and ``input_scale``, saved with the weights) and clipped, then passes through the hidden blocks
    Linear → Norm → activation → dropout and a final Linear.

    Shape:
        - Input: ``(N, n_genes)`` float.
        - Output: ``(N, n_classes)`` logits.
    """

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("input_mean", torch.zeros(config.n_genes))
        self.register_buffer("input_scale", torch.ones(config.n_genes))
        self.input_dropout = nn.Dropout(config.input_dropout)
        blocks = []
        width = config.n_genes
        for hidden in config.hidden_sizes:
            blocks.append(
                nn.Sequential(
                    nn.Linear(width, hidden),
                    create_norm(config.norm, hidden, eps=config.norm_eps, momentum=config.norm_momentum),
                    ACTIVATIONS[config.activation](),
                    nn.Dropout(config.dropout),
                )
            )
            width = hidden
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(width, config.n_classes)

    @torch.no_grad()
    def set_input_scaling(self, mean: torch.Tensor, scale: torch.Tensor) -> None:
        """Fix the per-gene standardization (``scale`` values below 1e-3 are raised to 1e-3)."""
        self.input_mean.copy_(torch.as_tensor(mean, dtype=self.input_mean.dtype))
        self.input_scale.copy_(torch.as_tensor(scale, dtype=self.input_scale.dtype).clamp_min(1e-3))

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """Per-gene standardized and clipped input."""
        clip = self.config.input_clip
        return ((x - self.input_mean) / self.input_scale).clamp_(-clip, clip)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden block's output for log-normalized input ``x``."""
        return self.blocks(self.input_dropout(self.standardize(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for log-normalized input ``x`` of shape ``(N, n_genes)``."""
        return self.head(self.embed(x))
