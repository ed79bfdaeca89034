"""Normalization layers chosen by name, so a model's config can say which one its hidden blocks use."""

from __future__ import annotations

from torch import nn

from model.batchrenorm import BatchRenorm1d

NORM_LAYERS = ("batchrenorm", "batchnorm", "layernorm", "none")
"""The names :func:`create_norm` understands."""


def create_norm(name: str, num_features: int, *, eps: float = 1e-5, momentum: float = 0.01) -> nn.Module:
    """Build the normalization layer called ``name`` for ``num_features`` channels.

    ``batchrenorm`` starts as plain batch norm (``r_max=1, d_max=0``); a schedule relaxes its limits
    during training. ``momentum`` weights the new batch in the running statistics (batch layers only).
    """
    if name == "batchrenorm":
        return BatchRenorm1d(num_features, eps=eps, momentum=momentum)
    if name == "batchnorm":
        return nn.BatchNorm1d(num_features, eps=eps, momentum=momentum)
    if name == "layernorm":
        return nn.LayerNorm(num_features, eps=eps)
    if name == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm layer {name!r}; choose one of {', '.join(NORM_LAYERS)}")
