"""``POST /v1/predict`` (JSON or npz) and ``POST /v1/predict/h5ad`` (an uploaded AnnData file)."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query, Request, Response
from starlette.datastructures import UploadFile

from service.decoding.predict import decode_predict_json, decode_predict_npz
from service.decoding.prediction_input import PredictionInput
from service.deps import MetricsDep, RunnerDep, ServedModelDep, SettingsDep
from service.errors import RequestInputError, unsupported_media_type
from service.h5ad_io import H5AD_MEDIA_TYPE, annotated_h5ad, predictions_csv, read_h5ad_cells
from service.inference import annotate, predict_payload, prediction_records
from service.model_store import ServedModel
from service.provenance_io import provenance_headers, served_record
from service.routers import ERROR_RESPONSES, JSON_MEDIA_TYPE, NPZ_MEDIA_TYPE, media_type, openapi_request_body
from service.schemas import PredictRequest, PredictResponse
from service.settings import Settings
from service.upload_genes import align_upload

router = APIRouter(prefix="/v1/predict", tags=["predict"])

InputQuery = Annotated[
    Literal["counts", "lognorm"] | None,
    Query(alias="input", description="npz bodies only: 'counts' (default) or 'lognorm'."),
]
TopKQuery = Annotated[int | None, Query(ge=1, description="Also return the k most likely types per cell.")]
ProbabilitiesQuery = Annotated[bool | None, Query(description="Also return every type's probability.")]
ThresholdQuery = Annotated[
    float | None, Query(ge=0.0, le=1.0, description="Confidence below which the label is 'Unknown'.")
]

_H5AD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary", "description": "An .h5ad file."}},
                    "required": ["file"],
                }
            }
        },
    }
}
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]+")


@router.post(
    "",
    response_model=PredictResponse,
    summary="Predict cell types (JSON rows, JSON CSR or npz)",
    openapi_extra=openapi_request_body(PredictRequest, [NPZ_MEDIA_TYPE]),
    responses=ERROR_RESPONSES,
)
async def predict(
    request: Request,
    served: ServedModelDep,
    runner: RunnerDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    input_kind: InputQuery = None,
    top_k: TopKQuery = None,
    return_probabilities: ProbabilitiesQuery = None,
    threshold: ThresholdQuery = None,
) -> Response:
    """Cell types for raw counts (or log-normalized values) of any number of genes.

    **JSON** (`application/json`): `{"genes": [...], "cells": [[...], ...]}` — one row per cell, one
    value per gene in the order of `genes` — or `{"genes": [...], "csr": {"indptr", "indices", "data"}}`
    for sparse cells; options `cell_ids`, `input`, `top_k`, `return_probabilities`, `threshold` go in
    the body.

    **npz** (`application/x-npz`, `numpy.savez` output): arrays `genes` and either `X` (cells x genes)
    or `data`/`indices`/`indptr` (CSR), optionally `cell_ids`; options go in the query string.

    Genes may be named by any identifier the model was trained with (its `var_names` or a `var` column
    of its training data, e.g. symbols or Ensembl IDs); the set that overlaps best is used and
    `gene_overlap.identifier` names it. The answer's `model` holds the model's `version` and
    `bundle_sha256` digest (also in the `X-Celltype-Model-*` headers).

    A cell's answer never depends on the other cells of the request.
    """
    received = media_type(request)
    options = {
        name: value
        for name, value in {
            "input": input_kind,
            "top_k": top_k,
            "return_probabilities": return_probabilities,
            "threshold": threshold,
        }.items()
        if value is not None
    }
    if received == JSON_MEDIA_TYPE:
        if options:
            raise RequestInputError(f"options {sorted(options)} go in the JSON body, not in the query string")
    elif received != NPZ_MEDIA_TYPE:
        raise unsupported_media_type(received, [JSON_MEDIA_TYPE, NPZ_MEDIA_TYPE])
    body = await request.body()
    content, n_cells = await runner.run(_predict_body, served, settings, received, body, options)
    metrics.cells.labels("/v1/predict").inc(n_cells)
    return Response(content, media_type=JSON_MEDIA_TYPE, headers=provenance_headers(served.summary))


def _predict_body(
    served: ServedModel, settings: Settings, received: str, body: bytes, options: dict[str, Any]
) -> tuple[bytes, int]:
    if received == JSON_MEDIA_TYPE:
        request = decode_predict_json(body, settings.max_cells_per_request)
    else:
        request = decode_predict_npz(body, settings.max_cells_per_request, settings.max_expanded_bytes, options)
    return orjson.dumps(predict_payload(served, request)), request.n_cells


@router.post(
    "/h5ad",
    summary="Predict every cell of an uploaded .h5ad file",
    openapi_extra=_H5AD_BODY,
    responses={
        **ERROR_RESPONSES,
        200: {
            "description": "Predictions as JSON (default), CSV, or the annotated .h5ad file.",
            "content": {"text/csv": {}, H5AD_MEDIA_TYPE: {}},
        },
    },
)
async def predict_h5ad(
    request: Request,
    served: ServedModelDep,
    runner: RunnerDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    output_format: Annotated[
        Literal["json", "csv", "h5ad"],
        Query(alias="format", description="json (default), csv, or h5ad (the file annotated in obs)."),
    ] = "json",
    layer: Annotated[str | None, Query(description="Read values from layers[layer] instead of X.")] = None,
    gene_column: Annotated[
        str | None,
        Query(description="Gene names from this var column (e.g. gene_ids) instead of var_names."),
    ] = None,
    input_kind: Annotated[
        Literal["auto", "counts", "lognorm"],
        Query(alias="input", description="Kind of values; 'auto' detects counts vs log-normalized."),
    ] = "auto",
    top_k: TopKQuery = None,
    return_probabilities: Annotated[bool, Query(description="Also return every type's probability.")] = False,
    threshold: ThresholdQuery = None,
) -> Response:
    """Upload an `.h5ad` file as the multipart field `file`. `format=h5ad` answers the same file with
    `obs['predicted_cell_type']` and `obs['confidence']` added, and the provenance record in
    `uns['celltype']` (model URI, name, version, `sha256` digest, threshold, celltype version, time, gene
    overlap).

    Genes are `var_names`, or the `var` column named by `gene_column`; either may use any identifier
    the model was trained with (`gene_overlap.identifier` says which matched). Too little overlap is a
    422 naming the upload's `var` columns that would match. CSV and h5ad answers carry the model in
    `X-Celltype-Model-Sha256`, `X-Celltype-Model-Version` and `X-Celltype-Model-Name` headers."""
    received = media_type(request)
    if received != "multipart/form-data":
        raise unsupported_media_type(received, ["multipart/form-data (field 'file')"])
    async with request.form(max_files=1, max_fields=16) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise RequestInputError("send the .h5ad file in a multipart field named 'file'")
        options = {
            "output_format": output_format,
            "layer": layer,
            "gene_column": gene_column,
            "input_kind": input_kind,
            "top_k": top_k,
            "return_probabilities": return_probabilities,
            "threshold": threshold,
        }
        content, content_type, n_cells = await runner.run(_predict_upload, served, settings, upload, options)
    metrics.cells.labels("/v1/predict/h5ad").inc(n_cells)
    headers = provenance_headers(served.summary)
    if content_type == H5AD_MEDIA_TYPE:
        stem = _UNSAFE_FILENAME.sub("_", Path(upload.filename or "cells").stem)[:100] or "cells"
        headers["Content-Disposition"] = f'attachment; filename="{stem}.annotated.h5ad"'
    return Response(content, media_type=content_type, headers=headers)


def _predict_upload(
    served: ServedModel, settings: Settings, upload: UploadFile, options: dict[str, Any]
) -> tuple[bytes, str, int]:
    with tempfile.TemporaryDirectory(prefix="celltype-upload-") as directory:
        path = Path(directory) / "upload.h5ad"
        upload.file.seek(0)
        with path.open("wb") as handle:
            shutil.copyfileobj(upload.file, handle, 1 << 20)
        cells = read_h5ad_cells(
            path,
            layer=options["layer"],
            gene_column=options["gene_column"],
            input_kind=options["input_kind"],
            max_cells=settings.max_cells_per_request,
            max_expanded_bytes=settings.max_expanded_bytes,
        )
        request = PredictionInput(
            cells.matrix,
            cells.genes,
            cells.cell_ids,
            cells.input_kind,
            options["top_k"],
            options["return_probabilities"],
            options["threshold"],
        )
        align_upload(served, cells)
        annotation = annotate(served, request)
        if options["output_format"] == "h5ad":
            record = served_record(served, request.threshold, annotation.alignment.report())
            content = annotated_h5ad(
                cells, annotation.labels, annotation.confidence, Path(directory), annotation.unknown_reason, record
            )
            return content, H5AD_MEDIA_TYPE, request.n_cells
        records = prediction_records(
            served,
            annotation,
            cell_ids=cells.cell_ids,
            top_k=request.top_k,
            return_probabilities=request.return_probabilities,
        )
        if options["output_format"] == "csv":
            return predictions_csv(records, served.predictor.classes), "text/csv; charset=utf-8", request.n_cells
        payload = {
            "model": served.summary,
            "input": cells.input_kind,
            "predictions": records,
            "gene_overlap": annotation.alignment.report(),
        }
        return orjson.dumps(payload), JSON_MEDIA_TYPE, request.n_cells
