"""A decoded prediction request: the matrix and the per-request options, whatever the body's format."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass
class PredictionInput:
    """A decoded prediction request, ready for the model.

    Attributes:
        matrix: cells x genes, float32 (dense) or CSR.
        genes: the column names; ``None`` means the model's genes in the model's order.
        cell_ids: optional id per cell.
        input_kind: ``"counts"`` or ``"lognorm"``.
        top_k: how many ranked labels to return per cell (``None`` = none).
        return_probabilities: return every class probability.
        threshold: confidence threshold override.
    """

    matrix: np.ndarray | sp.csr_matrix
    genes: list[str] | None
    cell_ids: list[str] | None = None
    input_kind: str = "counts"
    top_k: int | None = None
    return_probabilities: bool = False
    threshold: float | None = None

    @property
    def n_cells(self) -> int:
        """Number of cells."""
        return int(self.matrix.shape[0])
