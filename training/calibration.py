"""Temperature scaling (Guo et al. 2017): one scalar ``T`` fitted on validation logits so that
``softmax(logits / T)`` has minimal negative log-likelihood. Argmax predictions do not change."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0


def fit_temperature(logits: np.ndarray | torch.Tensor, targets: np.ndarray | torch.Tensor) -> float:
    """The temperature minimizing the NLL of ``softmax(logits / T)`` for ``targets``.

    Optimizes ``log T`` (so ``T`` stays positive) with L-BFGS in float64, starting from ``T = 1``.
    Returns 1.0 when there are no cells; the result is clipped to [0.05, 20].

    Args:
        logits: ``(n_cells, n_classes)`` validation logits.
        targets: ``(n_cells,)`` integer class indices.
    """
    logits_t = torch.as_tensor(logits, dtype=torch.float64).detach().cpu()
    targets_t = torch.as_tensor(targets, dtype=torch.long).detach().cpu()
    if logits_t.shape[0] == 0:
        return 1.0
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits_t / log_t.exp(), targets_t)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    if not np.isfinite(temperature):
        return 1.0
    return float(np.clip(temperature, MIN_TEMPERATURE, MAX_TEMPERATURE))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise ``softmax(logits / temperature)`` in float64, numerically stable."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    np.exp(scaled, out=scaled)
    scaled /= scaled.sum(axis=1, keepdims=True)
    return scaled
