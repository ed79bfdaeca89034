"""What model is serving: identity, labels, genes, expected input, held-out scores."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from model.bundle import UNKNOWN_LABEL
from model.preprocessing import INPUT_KINDS
from service.deps import ServedModelDep, SettingsDep
from service.model_store import ServedModel
from service.routers import NPZ_MEDIA_TYPE
from service.schemas import ModelDescription, ModelGenes
from service.settings import Settings

router = APIRouter(prefix="/v1/model", tags=["model"])

CONTENT_TYPES = {
    "/v1/predict": ["application/json", NPZ_MEDIA_TYPE],
    "/v1/predict/h5ad": ["multipart/form-data"],
    "/invocations": ["application/json", "text/csv", "application/vnd.apache.parquet"],
}
"""Request content types accepted by each prediction route."""


def describe(served: ServedModel, settings: Settings) -> dict[str, Any]:
    """The ``/v1/model`` answer for ``served``."""
    description = served.description
    metadata = description.get("metadata") or {}
    return {
        **served.summary,
        "aliases": description.get("aliases"),
        "labels": description["labels"],
        "n_genes": description["n_genes"],
        "gene_list_hash": description["gene_list_hash"],
        "expected_input": {
            "preprocessing": description["preprocessing"],
            "input_kinds": list(INPUT_KINDS),
            "default_input": "counts",
            "min_gene_overlap": settings.min_gene_overlap,
            "max_cells_per_request": settings.max_cells_per_request,
            "max_body_bytes": settings.max_body_bytes,
            "content_types": CONTENT_TYPES,
        },
        "unknown_label": UNKNOWN_LABEL,
        "unknown_threshold": description["unknown_threshold"],
        "novelty": description["novelty"],
        "min_detected_genes": description["min_detected_genes"],
        "temperature": description["temperature"],
        "norm": description["norm"],
        "holdout_scores": metadata.get("holdout_scores"),
        "validation_scores": metadata.get("validation_scores"),
        "train_batches": metadata.get("train_batches"),
        "holdout_batches": metadata.get("holdout_batches"),
        "datasets": metadata.get("datasets"),
        "trained_at": metadata.get("trained_at"),
        "loaded_at": served.loaded_at,
    }


@router.get("", response_model=ModelDescription, summary="The served model")
def get_model(served: ServedModelDep, settings: SettingsDep) -> dict[str, Any]:
    """Name, version, alias, run id, labels, gene count and hash, expected input, held-out scores, batches."""
    return describe(served, settings)


@router.get("/genes", response_model=ModelGenes, summary="The model's genes, in input order")
def get_genes(served: ServedModelDep) -> dict[str, Any]:
    """The gene list a request can send in this order (``genes`` may also be any order or a superset)."""
    return {"genes": served.predictor.genes, "gene_list_hash": served.description["gene_list_hash"]}
