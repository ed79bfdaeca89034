"""Running a trained model: ``Predictor`` turns cells x genes into cell types.

Inference always runs the classifier in eval mode on its fixed running statistics, so a cell's answer
never depends on which other cells came with it. A cell is ``"Unknown"`` for the first of these reasons
(:func:`model.novelty.unknown_reasons`): no counts over the model's genes, fewer detected model genes
than the bundle's ``min_detected_genes``, a novelty score above the bundle's detector threshold, or a
top probability below the confidence threshold; each is decided from that cell alone. Input is
processed in chunks so memory stays flat, dense or scipy-sparse alike, on CPU or CUDA.
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
from model.errors import GeneMismatchError, InputError
from model.genes import (
    DEFAULT_MIN_OVERLAP,
    VAR_NAMES,
    GeneAlignment,
    align_best,
    identifier_columns,
    matching_columns,
    suggest_columns,
)
from model.novelty import LOGITS, novelty_features, unknown_reasons
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
        labels: predicted cell type per cell (``"Unknown"`` when ``unknown_reason`` is set).
        confidence: calibrated probability of the most likely type, per cell.
        probabilities: ``(n_cells, n_classes)`` probabilities in the order of ``Predictor.classes``.
        alignment: how the input's genes matched the model's.
        unknown_reason: per cell, one of :data:`model.novelty.UNKNOWN_REASONS` (``""``: a known type).
        novelty_score: per cell, the bundle's novelty score (higher = less like the training cells;
            float64, NaN when the bundle has no novelty detector).
    """

    labels: np.ndarray
    confidence: np.ndarray
    probabilities: np.ndarray
    alignment: GeneAlignment
    unknown_reason: np.ndarray
    novelty_score: np.ndarray


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
            "novelty": self.bundle.novelty_state()[0],
            "min_detected_genes": self.bundle.min_detected_genes,
            "temperature": self.bundle.temperature,
            "norm": self.bundle.config.norm,
            "metadata": self.bundle.metadata,
        }

    @property
    def gene_identifiers(self) -> dict[str, list[str]]:
        """Every identifier set of the model's genes: ``var_names`` first, then the training data's
        identifier columns (each list in the model's gene order)."""
        return {VAR_NAMES: self.genes, **self.bundle.gene_identifiers}

    def align(self, genes: Sequence[str] | None, *, var: Any = None) -> GeneAlignment:
        """Align input gene names to the model's (cached per gene list, thread-safe). ``None`` means the model's order.

        The names are matched against every identifier set of the model (:attr:`gene_identifiers`) and
        the best-overlapping set is used. ``var`` (the input's ``var`` DataFrame, when it has one) only
        improves the error: too little overlap names the ``var`` columns that would have matched.
        """
        key = tuple(self.genes if genes is None else (str(g) for g in genes))
        with self._alignments_lock:
            alignment = self._alignments.get(key)
            if alignment is not None:
                self._alignments.move_to_end(key)
                return alignment
        try:
            alignment = align_best(key, self.gene_identifiers, min_overlap=self.min_overlap)
        except GeneMismatchError as exc:
            if var is None:
                raise
            raise self._with_column_hint(exc, var) from None
        with self._alignments_lock:
            self._alignments[key] = alignment
            if len(self._alignments) > 64:
                self._alignments.popitem(last=False)
        return alignment

    def _with_column_hint(self, error: GeneMismatchError, var: Any) -> GeneMismatchError:
        columns = identifier_columns(var.items(), [str(g) for g in var.index])
        return suggest_columns(error, matching_columns(columns, self.gene_identifiers, self.min_overlap))

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
        """Labels, confidences, probabilities and the reason for every ``"Unknown"``, per cell of ``X``.

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
        novelty_score = np.full(n_cells, np.nan)
        detected_genes = np.zeros(n_cells, dtype=np.int64)
        for start in range(0, n_cells, self.chunk_size):
            stop = min(start + self.chunk_size, n_cells)
            selected = self._selected(matrix[start:stop], alignment)
            detected_genes[start:stop] = np.count_nonzero(selected > 0, axis=1)
            model_input = to_model_input(selected, input_kind, self.bundle.preprocessing.target_sum)
            probabilities[start:stop], novelty_score[start:stop] = self._outputs(model_input)
        best = probabilities.argmax(axis=1) if n_cells else np.zeros(0, dtype=np.int64)
        confidence = probabilities[np.arange(n_cells), best]
        novelty = self.bundle.novelty
        reasons = unknown_reasons(
            confidence,
            threshold,
            None if novelty is None else novelty_score > novelty.threshold,
            detected_genes=detected_genes,
            min_detected_genes=self.bundle.min_detected_genes,
        )
        labels = np.where(reasons == "", self._classes[best], UNKNOWN_LABEL).astype(object)
        return Annotation(
            labels=labels,
            confidence=confidence,
            probabilities=probabilities,
            alignment=alignment,
            unknown_reason=reasons,
            novelty_score=novelty_score,
        )

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
        return to_model_input(self._selected(chunk, alignment), input_kind, self.bundle.preprocessing.target_sum)

    @staticmethod
    def _selected(chunk: np.ndarray | sp.csr_matrix, alignment: GeneAlignment) -> np.ndarray:
        """The chunk's values over the model's genes, in the model's order (missing genes are 0)."""
        if alignment.is_identity:
            return chunk.toarray() if sp.issparse(chunk) else np.array(chunk, dtype=np.float32)
        selected = np.zeros((chunk.shape[0], alignment.n_model_genes), dtype=np.float32)
        found = np.flatnonzero(alignment.source_index >= 0)
        columns = chunk[:, alignment.source_index[found]]
        selected[:, found] = columns.toarray() if sp.issparse(columns) else columns
        return selected

    @torch.inference_mode()
    def _outputs(self, model_input: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated probabilities and novelty scores (NaN without a detector) from one forward pass."""
        inputs = torch.from_numpy(model_input).to(self.device, non_blocking=True)
        novelty = self.bundle.novelty
        if novelty is None:
            logits = self.model(inputs).float()
            scores = np.full(model_input.shape[0], np.nan)
        else:
            features = novelty_features(self.model, inputs)
            logits = features[LOGITS].float()
            scores = novelty.score(features)
        return torch.softmax(logits / self.bundle.temperature, dim=1).cpu().numpy(), scores

    @torch.inference_mode()
    def _embedding(self, model_input: np.ndarray) -> np.ndarray:
        inputs = torch.from_numpy(model_input).to(self.device, non_blocking=True)
        return self.model.embed(inputs).float().cpu().numpy()
