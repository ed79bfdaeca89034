"""``POST /invocations``: the MLflow scoring protocol, answered like ``mlflow models serve`` with our pyfunc.

Accepted bodies are those of MLflow's scoring server: JSON with exactly one of ``dataframe_split``,
``dataframe_records``, ``instances`` or ``inputs`` (columns = gene names, values = raw counts), CSV
with a header of gene names, or Parquet. The answer is ``{"predictions": [{"predicted_cell_type",
"confidence", "unknown_reason", "prob_<type>"...}, ...]}``, the pyfunc's output (see ``model/pyfunc.py``), so a client
can switch between the two servers without changes. Errors carry MLflow's ``error_code`` and
``message`` besides ``detail``.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import orjson
import pandas as pd
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from model.outputs import CONFIDENCE_COLUMN, LABEL_COLUMN, PYFUNC_PROBABILITY_PREFIX, UNKNOWN_REASON_COLUMN
from service.decoding.fields import check_names
from service.decoding.json_body import JsonBody, read_json
from service.decoding.prediction_input import PredictionInput
from service.deps import MetricsDep, RunnerDep, ServedModelDep, SettingsDep
from service.errors import MalformedBodyError, RequestInputError, too_many_cells, unsupported_media_type
from service.inference import annotate
from service.model_store import ServedModel
from service.routers import ERROR_RESPONSES, JSON_MEDIA_TYPE, media_type, openapi_request_body
from service.settings import Settings

router = APIRouter(tags=["mlflow"])

CSV_MEDIA_TYPE = "text/csv"
PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"
INPUT_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
"""The keys of MLflow's JSON scoring protocol; a body has exactly one of them."""


class DataframeSplit(BaseModel):
    """``pandas.DataFrame.to_dict(orient="split")``: gene names as columns, one row per cell."""

    columns: list[str] | None = Field(None, description="Gene names; absent = the model's genes in order.")
    data: list[list[float]]
    index: list[Any] | None = None


class InvocationsRequest(BaseModel):
    """MLflow's scoring protocol: exactly one of the four input keys."""

    model_config = ConfigDict(extra="forbid")

    dataframe_split: DataframeSplit | None = None
    dataframe_records: list[dict[str, float]] | None = None
    instances: list[Any] | dict[str, list[float]] | None = None
    inputs: list[Any] | dict[str, list[float]] | None = None
    params: dict[str, Any] | None = Field(None, description="Accepted for compatibility; must be empty.")


@router.post(
    "/invocations",
    summary="MLflow scoring protocol (drop-in for `mlflow models serve`)",
    openapi_extra=openapi_request_body(InvocationsRequest, [CSV_MEDIA_TYPE, PARQUET_MEDIA_TYPE]),
    responses=ERROR_RESPONSES,
)
async def invocations(
    request: Request, served: ServedModelDep, runner: RunnerDep, settings: SettingsDep, metrics: MetricsDep
) -> Response:
    """Raw counts in, `{"predictions": [{"predicted_cell_type", "confidence", "unknown_reason", "prob_<type>"...}]}`
    out."""
    received = media_type(request)
    if received not in (JSON_MEDIA_TYPE, CSV_MEDIA_TYPE, PARQUET_MEDIA_TYPE):
        raise unsupported_media_type(received, [JSON_MEDIA_TYPE, CSV_MEDIA_TYPE, PARQUET_MEDIA_TYPE])
    body = await request.body()
    content, n_cells = await runner.run(_invoke, served, settings, received, body)
    metrics.cells.labels("/invocations").inc(n_cells)
    return Response(content, media_type=JSON_MEDIA_TYPE)


def _invoke(served: ServedModel, settings: Settings, received: str, body: bytes) -> tuple[bytes, int]:
    genes = served.predictor.genes
    max_cells = settings.max_cells_per_request
    if received == JSON_MEDIA_TYPE:
        request = read_json(
            body,
            lambda document: _decode_json(document, genes, max_cells),
            rows_at=(("dataframe_split", "data"), max_cells),
        )
    else:
        request = _decode_table(body, received, max_cells)
    annotation = annotate(served, request)
    classes = served.predictor.classes
    columns = [
        LABEL_COLUMN,
        CONFIDENCE_COLUMN,
        UNKNOWN_REASON_COLUMN,
        *(f"{PYFUNC_PROBABILITY_PREFIX}{name}" for name in classes),
    ]
    rows = zip(
        annotation.labels.tolist(),
        annotation.confidence.tolist(),
        annotation.unknown_reason.tolist(),
        *annotation.probabilities.T.tolist(),
        strict=True,
    )
    predictions = [dict(zip(columns, row, strict=True)) for row in rows]
    return orjson.dumps({"predictions": predictions}), request.n_cells


def _decode_json(document: JsonBody, model_genes: list[str], max_cells: int) -> PredictionInput:
    keys = document.keys()
    unknown = sorted(set(keys) - {*INPUT_FORMATS, "params"})
    formats = [key for key in keys if key in INPUT_FORMATS]
    if unknown or len(formats) != 1:
        raise RequestInputError(
            f"the body must have exactly one of {', '.join(INPUT_FORMATS)} (and optionally 'params'); "
            f"got keys {sorted(keys)}"
        )
    if document.value(("params",)):
        raise RequestInputError("this model takes no params; use /v1/predict for options such as input or top_k")
    key = formats[0]
    if key == "dataframe_split":
        return _dataframe_split(document, model_genes, max_cells)
    value = document.value((key,))
    if key == "dataframe_records" or (isinstance(value, list) and value and isinstance(value[0], dict)):
        return _records(value, key, max_cells)
    if isinstance(value, dict):
        return _columns(value, key, max_cells)
    return _rows(value, key, model_genes, max_cells)


def _dataframe_split(document: JsonBody, model_genes: list[str], max_cells: int) -> PredictionInput:
    unknown = sorted(set(document.keys(("dataframe_split",))) - {"columns", "data", "index"})
    if unknown:
        raise RequestInputError(f"unknown key(s) {unknown} in 'dataframe_split'; allowed: columns, data, index")
    columns = document.value(("dataframe_split", "columns"))
    genes = check_names(columns, "dataframe_split.columns") if columns is not None else None
    width = len(model_genes) if genes is None else len(genes)
    matrix = document.matrix(("dataframe_split", "data"), width, max_cells)
    return PredictionInput(np.asarray(matrix, dtype=np.float32), genes)


def _records(records: Any, key: str, max_cells: int) -> PredictionInput:
    if not isinstance(records, list) or not records:
        raise RequestInputError(f"'{key}' must be a non-empty list of {{gene: count}} objects")
    if len(records) > max_cells:
        raise too_many_cells(len(records), max_cells)
    if not isinstance(records[0], dict):
        raise RequestInputError(f"'{key}[0]' must be an object mapping gene names to counts")
    genes = list(records[0])
    for index, record in enumerate(records):
        if not isinstance(record, dict) or record.keys() != records[0].keys():
            raise RequestInputError(f"'{key}[{index}]' must name the same genes as '{key}[0]'")
    rows = [list(record.values()) for record in records]
    return PredictionInput(_numbers(rows, key), genes)


def _columns(columns: dict[str, Any], key: str, max_cells: int) -> PredictionInput:
    genes = list(columns)
    values = list(columns.values())
    if not genes or any(not isinstance(column, list) for column in values):
        raise RequestInputError(f"'{key}' must map each gene name to a list of counts (one per cell)")
    lengths = {len(column) for column in values}
    if len(lengths) != 1:
        raise RequestInputError(f"every gene in '{key}' must have the same number of cells")
    if lengths.pop() > max_cells:
        raise too_many_cells(len(values[0]), max_cells)
    return PredictionInput(np.ascontiguousarray(_numbers(values, key).T), genes)


def _rows(rows: Any, key: str, model_genes: list[str], max_cells: int) -> PredictionInput:
    if not isinstance(rows, list) or not rows:
        raise RequestInputError(f"'{key}' must be a non-empty list of cells")
    if len(rows) > max_cells:
        raise too_many_cells(len(rows), max_cells)
    for index, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != len(model_genes):
            raise RequestInputError(
                f"'{key}[{index}]' must be a list of {len(model_genes)} counts in the model's gene order "
                "(GET /v1/model/genes), or use dataframe_split with gene names as columns"
            )
    return PredictionInput(_numbers(rows, key), None)


def _numbers(rows: list[list[Any]], key: str) -> np.ndarray:
    for index, row in enumerate(rows):
        for position, value in enumerate(row):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise RequestInputError(f"'{key}': cell {index}, column {position} is {value!r}; send numbers only")
    return np.asarray(rows, dtype=np.float32)


def _decode_table(body: bytes, received: str, max_cells: int) -> PredictionInput:
    if not body.strip():
        raise MalformedBodyError("the request body is empty")
    try:
        frame = pd.read_csv(io.BytesIO(body)) if received == CSV_MEDIA_TYPE else pd.read_parquet(io.BytesIO(body))
    except Exception as exc:  # pandas/pyarrow raise many kinds for unreadable input; all mean the same
        raise MalformedBodyError(
            f"the body is not a readable {received} table ({type(exc).__name__}: {exc})"
        ) from None
    if len(frame) > max_cells:
        raise too_many_cells(len(frame), max_cells)
    if len(frame) == 0:
        raise RequestInputError("the table has no rows; send one row per cell")
    non_numeric = [str(c) for c, dtype in frame.dtypes.items() if not pd.api.types.is_numeric_dtype(dtype)]
    if non_numeric:
        raise RequestInputError(f"gene columns must hold numbers (raw counts); these do not: {non_numeric[:5]}")
    return PredictionInput(frame.to_numpy(dtype=np.float32), [str(c) for c in frame.columns])


def mlflow_error_fields(status_code: int, detail: Any) -> dict[str, Any]:
    """MLflow's ``error_code`` and ``message`` for an error answer of ``/invocations``."""
    if status_code >= 500 and status_code not in (503, 504):
        code = "INTERNAL_ERROR"
    elif status_code in (503, 504):
        code = "TEMPORARILY_UNAVAILABLE"
    elif status_code == 422:
        code = "INVALID_PARAMETER_VALUE"
    else:
        code = "BAD_REQUEST"
    return {"error_code": code, "message": detail if isinstance(detail, str) else str(detail)}

