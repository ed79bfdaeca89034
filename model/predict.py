"""Running a trained model: ``Predictor`` turns cells x genes into cell types.

Inference always runs the classifier in eval mode on its fixed running statistics, so a cell's answer
never depends on which other cells came with it. Input is processed in chunks so memory stays flat,
dense or scipy-sparse alike, on CPU or CUDA.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from model.bundle import UNKNOWN_LABEL, ModelBundle, load_bundle
from model.errors import InputError
from model.genes import DEFAULT_MIN_OVERLAP, GeneAlignment, align_genes
from model.preprocessing import as_matrix, check_input_kind, check_values, to_model_input

DEFAULT_CHUNK_SIZE = 1024
"""Cells per forward pass; bounds the dense working set to chunk_size x n_genes floats."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else CPU; ``"cuda"`` without a GPU is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was requested but no CUDA GPU is available; use 'cpu' or 'auto'")
    return resolved


@dataclass(frozen=True)
class Annotation:
    """Predictions for a set of cells.

    Attributes:
        labels: predicted cell type per cell (``"Unknown"`` below the threshold).
        confidence: calibrated probability of the most likely type, per cell.
        probabilities: ``(n_cells, n_classes)`` probabilities in the order of ``Predictor.classes``.
        alignment: how the input's genes matched the model's.
    """

    labels: np.ndarray
    confidence: np.ndarray
    probabilities: np.ndarray
    alignment: GeneAlignment


class Predictor:
    """A loaded model ready to annotate cells.

    Args:
        bundle: the model bundle.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or a torch device.
        chunk_size: cells per forward pass.
        min_overlap: least share of the model's genes an input must contain.
        source: where the model came from (registry name, version, alias, run id), for reporting.
    """

    def __init__(
        self,
        bundle: ModelBundle,
        *,
        device: str | torch.device = "auto",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        min_overlap: float = DEFAULT_MIN_OVERLAP,
        source: dict[str, Any] | None = None,
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.bundle = bundle
        self.device = resolve_device(device)
        self.chunk_size = chunk_size
        self.min_overlap = min_overlap
        self.source = dict(source or {})
        self.model = bundle.build_model(self.device)
        self._classes = np.asarray(bundle.classes, dtype=object)
        self._alignments: OrderedDict[tuple[str, ...], GeneAlignment] = OrderedDict()
        self._alignments_lock = threading.Lock()

    @classmethod
    def load(
        cls, uri_or_path: str | os.PathLike[str], *, tracking_uri: str | None = None, **kwargs: Any
    ) -> Predictor:
        """Load from a bundle directory or a registry URI (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``).

        Registry URIs are resolved against ``tracking_uri`` (default: ``MLFLOW_TRACKING_URI``) and the
        downloaded bundle must match the digest recorded on the model version.
        """
        text = str(uri_or_path)
        if text.startswith(("models:/", "runs:/")):
            from model.registry import fetch_bundle

            directory, source = fetch_bundle(text, tracking_uri=tracking_uri)
            bundle = load_bundle(directory, expected_sha256=source.get("bundle_sha256"))
            return cls(bundle, source=source, **kwargs)
        bundle = load_bundle(Path(text))
        return cls(bundle, source={"uri": text}, **kwargs)

    @property
    def genes(self) -> list[str]:
        """The model's ordered gene list."""
        return self.bundle.genes

    @property
    def classes(self) -> list[str]:
        """The cell types, in the order of the probability columns."""
        return self.bundle.classes

    @property
    def threshold(self) -> float:
        """Default confidence below which a cell is labelled ``"Unknown"``."""
        return self.bundle.unknown_threshold

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description of the model: source, labels, genes, input contract, training facts."""
        return {
            **self.source,
            "bundle_sha256": self.bundle.sha256,
            "labels": list(self.classes),
            "n_genes": len(self.genes),
            "gene_list_hash": self.bundle.gene_list_hash,
            "preprocessing": self.bundle.preprocessing.to_dict(),
            "unknown_threshold": self.threshold,
            "temperature": self.bundle.temperature,
            "norm": self.bundle.config.norm,
            "metadata": self.bundle.metadata,
        }

    def align(self, genes: Sequence[str] | None) -> GeneAlignment:
        """Align input gene names to the model's (cached per gene list, thread-safe). ``None`` means the model's order."""
        key = tuple(self.genes if genes is None else (str(g) for g in genes))
        with self._alignments_lock:
            alignment = self._alignments.get(key)
            if alignment is not None:
                self._alignments.move_to_end(key)
                return alignment
        alignment = align_genes(key, self.genes, min_overlap=self.min_overlap)
        with self._alignments_lock:
            self._alignments[key] = alignment
            if len(self._alignments) > 64:
                self._alignments.popitem(last=False)
        return alignment

    def transform(
        self, X: Any, genes: Sequence[str] | None = None, *, input_kind: str = "counts"
    ) -> np.ndarray:
        """The model's input for ``X``: checked, normalized, aligned to the model's genes (float32)."""
        matrix, alignment = self._checked(X, genes, input_kind)
        return self._model_input(matrix, alignment, input_kind)

    def predict_proba(
        self, X: Any, genes: Sequence[str] | None = None, *, input_kind: str = "counts"
    ) -> np.ndarray:
        """Calibrated class probabilities ``(n_cells, n_classes)``, columns in the order of :attr:`classes`."""
        return self.annotate(X, genes, input_kind=input_kind).probabilities

    def predict(
        self,
        X: Any,
        genes: Sequence[str] | None = None,
        *,
        input_kind: str = "counts",
        threshold: float | None = None,
    ) -> np.ndarray:
        """Predicted cell type per cell; ``"Unknown"`` where confidence is below ``threshold``."""
        return self.annotate(X, genes, input_kind=input_kind, threshold=threshold).labels

    def embed(
        self, X: Any, genes: Sequence[str] | None = None, *, input_kind: str = "counts"
    ) -> np.ndarray:
        """The last hidden layer's activations ``(n_cells, width)`` (float32; eval mode, same input
        checks and preprocessing as :meth:`predict_proba`)."""
        matrix, alignment = self._checked(X, genes, input_kind)
        n_cells = matrix.shape[0]
        embedding = np.empty((n_cells, self.bundle.config.hidden_sizes[-1]), dtype=np.float32)
        for start in range(0, n_cells, self.chunk_size):
            stop = min(start + self.chunk_size, n_cells)
            embedding[start:stop] = self._embedding(self._model_input(matrix[start:stop], alignment, input_kind))
        return embedding

    def annotate(
        self,
        X: Any,
        genes: Sequence[str] | None = None,
        *,
        input_kind: str = "counts",
        threshold: float | None = None,
    ) -> Annotation:
        """Labels, confidences and probabilities for every cell of ``X`` (cells x genes).

        Args:
            X: dense array-like or scipy sparse matrix, one row per cell, columns named by ``genes``.
            genes: the column names; ``None`` means exactly the model's genes in the model's order.
            input_kind: ``"counts"`` (raw counts; normalized here) or ``"lognorm"`` (log1p CP10k).
            threshold: confidence below which the label is ``"Unknown"`` (default: the model's).
        """
        matrix, alignment = self._checked(X, genes, input_kind)
        threshold = self.threshold if threshold is None else float(threshold)
        if not 0.0 <= threshold <= 1.0:
            raise InputError(f"threshold must be between 0 and 1, got {threshold}")
        n_cells = matrix.shape[0]
        probabilities = np.empty((n_cells, len(self.classes)), dtype=np.float32)
        for start in range(0, n_cells, self.chunk_size):
            stop = min(start + self.chunk_size, n_cells)
            chunk = self._model_input(matrix[start:stop], alignment, input_kind)
            probabilities[start:stop] = self._probabilities(chunk)
        best = probabilities.argmax(axis=1) if n_cells else np.zeros(0, dtype=np.int64)
        confidence = probabilities[np.arange(n_cells), best]
        labels = self._classes[best]
        labels = np.where(confidence < threshold, UNKNOWN_LABEL, labels).astype(object)
        return Annotation(labels=labels, confidence=confidence, probabilities=probabilities, alignment=alignment)

    def _checked(
        self, X: Any, genes: Sequence[str] | None, input_kind: str
    ) -> tuple[np.ndarray | sp.csr_matrix, GeneAlignment]:
        check_input_kind(input_kind)
        matrix = as_matrix(X)
        n_columns = len(self.genes) if genes is None else len(genes)
        if matrix.shape[1] != n_columns and matrix.shape[0] > 0:
            raise InputError(
                f"each cell has {matrix.shape[1]} values but {n_columns} gene names were given; "
                "send one value per gene, in the order of the gene names"
            )
        alignment = self.align(genes)
        check_values(matrix, input_kind)
        return matrix, alignment

    def _model_input(
        self, chunk: np.ndarray | sp.csr_matrix, alignment: GeneAlignment, input_kind: str
    ) -> np.ndarray:
        n_cells = chunk.shape[0]
        if alignment.is_identity:
            selected = chunk.toarray() if sp.issparse(chunk) else np.array(chunk, dtype=np.float32)
        else:
            selected = np.zeros((n_cells, alignment.n_model_genes), dtype=np.float32)
            found = np.flatnonzero(alignment.source_index >= 0)
            columns = chunk[:, alignment.source_index[found]]
            selected[:, found] = columns.toarray() if sp.issparse(columns) else columns
        return to_model_input(selected, input_kind, self.bundle.preprocessing.target_sum)

    @torch.inference_mode()
    def _probabilities(self, model_input: np.ndarray) -> np.ndarray:
        inputs = torch.from_numpy(model_input).to(self.device, non_blocking=True)
        logits = self.model(inputs).float()
        return torch.softmax(logits / self.bundle.temperature, dim=1).cpu().numpy()

    @torch.inference_mode()
    def _embedding(self, model_input: np.ndarray) -> np.ndarray:
        inputs = torch.from_numpy(model_input).to(self.device, non_blocking=True)
        return self.model.embed(inputs).float().cpu().numpy()
