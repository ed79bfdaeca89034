"""Lab-adversarial training: a gradient-reversed lab classifier on the last hidden layer (DANN).

A small head predicts each training cell's lab (batch) from the classifier's last hidden block output;
its gradient reaches the classifier through a gradient-reversal layer (Ganin et al. 2016), so the
hidden features are pushed to carry no lab information while the head keeps trying to find it. The
reversal strength ramps up as ``weight · (2 / (1 + exp(-10 p)) - 1)`` with ``p`` the share of the
run done, as in DANN. The head is used in training only: the bundle holds the classifier alone.

Enabled by the config key ``adversarial_weight`` (> 0) when the training cells come from two or more
labs; :func:`attach_lab_adversary` wires it into a :class:`training.trainer.Trainer`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class GradientReversal(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``-strength`` backward."""

    @staticmethod
    def forward(ctx: Any, features: torch.Tensor, strength: float) -> torch.Tensor:
        """Pass ``features`` through unchanged."""
        ctx.strength = strength
        return features.view_as(features)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Reverse (and scale) the gradient."""
        return -ctx.strength * grad, None


def reversal_strength(weight: float, step: int, total_steps: int) -> float:
    """DANN's ramp ``weight · (2 / (1 + exp(-10 p)) - 1)`` at ``p = step / total_steps``."""
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return weight * (2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0)


class LabAdversary(nn.Module):
    """Predicts the lab of a cell from hidden features, through a gradient-reversal layer.

    Args:
        width: width of the hidden features.
        n_labs: number of training labs.
        hidden: width of the head's own hidden layer.
    """

    def __init__(self, width: int, n_labs: int, hidden: int = 64) -> None:
        super().__init__()
        if n_labs < 2:
            raise ValueError(f"a lab adversary needs two or more labs, got {n_labs}")
        self.head = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, n_labs))

    def forward(self, features: torch.Tensor, strength: float) -> torch.Tensor:
        """Lab logits of ``features``; the gradient into ``features`` is reversed and scaled by ``strength``."""
        return self.head(GradientReversal.apply(features, strength))


class LabAdversarialLoss:
    """The adversary's loss for a training step, from the features captured in the model's forward pass.

    Call it with the mini-batch's rows (indices into the trainer's data) after the forward pass.
    """

    def __init__(self, trainer: Any, lab_codes: np.ndarray, n_labs: int, weight: float) -> None:
        self.trainer = trainer
        self.lab_codes = lab_codes
        self.weight = weight
        width = trainer.model.config.hidden_sizes[-1]
        self.adversary = LabAdversary(width, n_labs).to(trainer.device)
        self.features: torch.Tensor | None = None
        trainer.model.blocks.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self.features = output if module.training else None

    def __call__(self, rows: np.ndarray) -> torch.Tensor:
        """Cross-entropy of the adversary's lab predictions for the cells ``rows`` of the last forward pass."""
        if self.features is None:
            raise RuntimeError("the lab adversary found no training forward pass to take features from")
        strength = reversal_strength(self.weight, self.trainer.step, self.trainer.total_steps)
        labs = torch.from_numpy(self.lab_codes[np.asarray(rows, dtype=np.int64)]).to(self.features.device)
        loss = F.cross_entropy(self.adversary(self.features.float(), strength), labs)
        self.features = None
        return loss


def attach_lab_adversary(trainer: Any, weight: float) -> LabAdversarialLoss | None:
    """Add a lab adversary to ``trainer`` (its loss term and its parameters); ``None`` with one lab.

    The adversary's parameters join the trainer's optimizer (same learning-rate schedule, weight
    decay of the config); its loss is added to each training step's loss.
    """
    batches = np.asarray(trainer.data.batches).astype(str)
    train_labs, codes = np.unique(batches[trainer.train_rows], return_inverse=True)
    if len(train_labs) < 2 or weight <= 0:
        return None
    lab_codes = np.full(len(batches), -1, dtype=np.int64)
    lab_codes[trainer.train_rows] = codes.reshape(-1)
    loss = LabAdversarialLoss(trainer, lab_codes, len(train_labs), weight)
    trainer.optimizer.add_param_group(
        {"params": list(loss.adversary.parameters()), "weight_decay": trainer.config.weight_decay}
    )
    trainer.auxiliary_losses.append(loss)
    return loss
