"""What requests and responses look like: the pydantic models that document the API (``/docs``).

The routes read large bodies themselves (see :mod:`service.decoding`); these models describe them
for the OpenAPI document and validate the small answers.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from model.novelty import UNKNOWN_REASONS


class CsrCells(BaseModel):
    """Cells as a CSR sparse matrix over ``genes``: row ``i`` holds ``data[indptr[i]:indptr[i+1]]``
    at gene columns ``indices[indptr[i]:indptr[i+1]]``; the number of cells is ``len(indptr) - 1``."""

    indptr: list[int] = Field(description="Row pointers, starting at 0, non-decreasing, length n_cells + 1.")
    indices: list[int] = Field(description="Gene column of each stored value (0-based, < len(genes)).")
    data: list[float] = Field(description="The stored values (raw counts unless input is 'lognorm').")


class PredictRequest(BaseModel):
    """A prediction request: exactly one of ``cells`` (dense rows) or ``csr`` (sparse)."""

    model_config = ConfigDict(extra="forbid")

    genes: list[str] = Field(description="Gene names of the columns, in order (any order; extra genes are ignored).")
    cells: list[list[float]] | None = Field(
        None, description="One row per cell, one value per gene, in the order of `genes`."
    )
    csr: CsrCells | None = Field(None, description="The cells as a CSR sparse matrix (for wide, sparse requests).")
    cell_ids: list[str] | None = Field(None, description="Optional id per cell, echoed in the predictions.")
    input: Literal["counts", "lognorm"] = Field(
        "counts", description="'counts': raw counts (normalized by the service); 'lognorm': log1p(CP10k)."
    )
    top_k: int | None = Field(None, ge=1, description="Also return the k most likely cell types per cell.")
    return_probabilities: bool = Field(False, description="Also return every cell type's probability.")
    threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="Confidence below which the label is 'Unknown' (default: the model's)."
    )


class RankedLabel(BaseModel):
    """One of a cell's most likely types."""

    label: str
    probability: float


class Prediction(BaseModel):
    """The prediction for one cell."""

    cell_id: str | None = Field(None, description="Present when the request named its cells.")
    label: str = Field(description="Predicted cell type, or 'Unknown' (see unknown_reason).")
    confidence: float = Field(description="Calibrated probability of the most likely cell type.")
    unknown_reason: Literal[UNKNOWN_REASONS] = Field(  # type: ignore[valid-type]
        description="Why the label is 'Unknown' ('' when it is not), the first that applies: 'no_counts' (no counts "
        "over the model's genes), 'too_few_genes' (fewer detected model genes than the model's minimum), "
        "'unlike_training' (unlike every cell type the model was trained on), 'low_confidence' (top "
        "probability below the threshold)."
    )
    probabilities: dict[str, float] | None = Field(None, description="With return_probabilities.")
    top_k: list[RankedLabel] | None = Field(None, description="With top_k.")


class GeneOverlap(BaseModel):
    """How the request's genes matched the model's."""

    identifier: str = Field(
        description="The model's identifier set the genes matched: 'var_names' or a var column of its "
        "training data (e.g. 'gene_ids')."
    )
    n_model_genes: int
    n_input_genes: int
    n_matched: int
    overlap: float
    n_missing: int
    missing_examples: list[str]
    n_ignored: int


class ModelSummary(BaseModel):
    """Which model answered."""

    model_config = ConfigDict(extra="allow")

    name: str | None = None
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    uri: str | None = None
    bundle_sha256: str | None = None


class PredictResponse(BaseModel):
    """Predictions, one per cell in request order."""

    model: ModelSummary
    predictions: list[Prediction]
    gene_overlap: GeneOverlap


class ErrorResponse(BaseModel):
    """Every error answer: ``detail`` says what was wrong and how to fix it."""

    detail: Any


class ExpectedInput(BaseModel):
    """What a prediction request must look like."""

    preprocessing: dict[str, Any]
    input_kinds: list[str]
    default_input: str
    min_gene_overlap: float
    max_cells_per_request: int
    max_body_bytes: int
    content_types: dict[str, list[str]]


class ModelDescription(ModelSummary):
    """Everything a client needs to know about the served model."""

    aliases: list[str] | None = None
    labels: list[str]
    n_genes: int
    gene_list_hash: str
    expected_input: ExpectedInput
    unknown_label: str
    unknown_threshold: float
    novelty: dict[str, Any] | None = Field(
        None, description="The novelty check (method, threshold, quantile); null for models without one."
    )
    min_detected_genes: int = Field(1, description="Cells detecting fewer of the model's genes are 'Unknown'.")
    temperature: float
    norm: str
    holdout_scores: dict[str, Any] | None = None
    validation_scores: dict[str, Any] | None = None
    train_batches: list[str] | None = None
    holdout_batches: list[str] | None = None
    datasets: Any = None
    trained_at: str | None = None
    loaded_at: str


class ModelGenes(BaseModel):
    """The model's genes, in the order of its input."""

    genes: list[str]
    gene_list_hash: str


class ReloadResponse(BaseModel):
    """Outcome of a reload: ``reloaded`` (a new version serves now) or ``unchanged``."""

    status: Literal["reloaded", "unchanged"]
    previous: ModelSummary | None
    current: ModelSummary
