"""The web page at ``/``, its static assets, the offline API docs and ``POST /v1/report`` (the page's data).

The page, its assets and the docs load without an API key (they hold no data); ``/v1/report``, like
every API route, is included behind the key by :func:`service.app.create_app`. The Swagger UI and
ReDoc bundles come from the ``fastapi-offline`` package, so ``/docs`` and ``/redoc`` work with no
internet.
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile

from model.novelty import UNKNOWN_REASONS
from model.outputs import UNKNOWN_REASON_COLUMN
from service.decoding.prediction_input import PredictionInput
from service.deps import MetricsDep, RunnerDep, ServedModelDep, SettingsDep
from service.errors import RequestInputError, unsupported_media_type
from service.h5ad_io import H5AD_MEDIA_TYPE, H5adCells, annotated_h5ad, predictions_csv, read_h5ad_cells
from service.inference import annotate, prediction_records
from service.model_store import ServedModel
from service.provenance_io import provenance_headers, served_record
from service.routers import ERROR_RESPONSES, JSON_MEDIA_TYPE, media_type
from service.settings import Settings
from service.upload_genes import align_upload
from service.web.csv_io import read_csv_cells
from service.web.report import DECIMALS, build_report

STATIC_DIR = Path(str(files("service.web") / "static"))
"""The page's own assets (index.html, app.js, app.css)."""
DOCS_ASSETS_DIR = Path(str(files("fastapi_offline") / "static"))
"""Swagger UI and ReDoc bundles shipped by ``fastapi-offline``."""
STATIC_URL = "/web"
"""Where the page's assets are served."""
DOCS_ASSETS_URL = "/web/docs-assets"
"""Where the Swagger UI / ReDoc bundles are served."""
NOVELTY_SCORE_KEY = "novelty_score"
"""The report's per-cell novelty score (higher = less like the training cells; ``null`` without a novelty check)."""
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
"""First bytes of an HDF5 (``.h5ad``) file."""
PAGE_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
"""The page may load and contact nothing but this service."""
DOCS_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; worker-src 'self' blob:; font-src 'self' data:",
    "X-Content-Type-Options": "nosniff",
}
"""Swagger UI and ReDoc run inline scripts, but must not fetch anything from elsewhere (ReDoc's logo link)."""

_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]+")

page_router = APIRouter(include_in_schema=False)
"""``/``, ``/docs`` and ``/redoc`` (no API key needed)."""
router = APIRouter(prefix="/v1/report", tags=["web page"])
"""``POST /v1/report`` (included behind the API key)."""

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "An .h5ad file, or a .csv / .csv.gz of cells x genes (header: "
                            "cell_id then gene names; one row per cell: its id, then one value per gene).",
                        }
                    },
                    "required": ["file"],
                }
            }
        },
    }
}


def mount_assets(app: FastAPI) -> None:
    """Serve the page's assets and the offline docs bundles from the installed package."""
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS_DIR), name="docs-assets")
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="web")


@page_router.get("/")
def page() -> FileResponse:
    """The web page: upload a file, see its cell types."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=PAGE_SECURITY_HEADERS)


@page_router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI for the OpenAPI document, every asset served by this service."""
    root = request.scope.get("root_path", "")
    response = get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
        swagger_ui_parameters={"validatorUrl": None},
    )
    response.headers.update(DOCS_SECURITY_HEADERS)
    return response


@page_router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    """ReDoc for the OpenAPI document, every asset served by this service (no web fonts)."""
    root = request.scope.get("root_path", "")
    response = get_redoc_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}{DOCS_ASSETS_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
        with_google_fonts=False,
    )
    response.headers.update(DOCS_SECURITY_HEADERS)
    return response


@router.post(
    "",
    summary="Report on an uploaded .h5ad or .csv(.gz) file (the web page's data), or its annotated copy",
    openapi_extra=_UPLOAD_BODY,
    responses={
        **ERROR_RESPONSES,
        200: {
            "description": "The report as JSON (default), the predictions as CSV, or the annotated .h5ad.",
            "content": {"text/csv": {}, H5AD_MEDIA_TYPE: {}},
        },
    },
)
async def report(
    request: Request,
    served: ServedModelDep,
    runner: RunnerDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    output_format: Annotated[
        Literal["json", "csv", "h5ad"],
        Query(alias="format", description="json (the report, default), csv (predictions) or h5ad (annotated)."),
    ] = "json",
    gene_column: Annotated[str | None, Query(description=".h5ad only: gene names from this var column.")] = None,
    input_kind: Annotated[
        Literal["auto", "counts", "lognorm"],
        Query(alias="input", description="Kind of values; 'auto' detects counts vs log-normalized."),
    ] = "auto",
) -> Response:
    """Upload a file as the multipart field `file` (at most `max_cells_per_report` cells).

    The JSON report has `model`, `input` (the kind of values), `gene_overlap`, `n_cells`, `threshold`,
    `unknown` (`count`, `share`, `reasons`: cells per reason, `checks`: the model's `min_detected_genes`,
    `novelty` (`method`, `threshold`, `quantile`, or null) and `threshold`), `counts` (cells per type, every type
    and Unknown, most frequent first), `confidence_histogram` (`edges`, `counts`), `map` (PCA of the model's
    last hidden layer: `x`, `y` and `cell` (row index) for at most 20,000 cells, `n_points`, `subsampled`,
    `explained_variance`) and `cells` (`cell_id`, `label`, `confidence`, `unknown_reason` (empty for a typed
    cell), `novelty_score` (null without a novelty check), one entry per cell).
    """
    received = media_type(request)
    if received != "multipart/form-data":
        raise unsupported_media_type(received, ["multipart/form-data (field 'file')"])
    async with request.form(max_files=1, max_fields=4) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise RequestInputError("send the .h5ad or .csv file in a multipart field named 'file'")
        options = {"output_format": output_format, "gene_column": gene_column, "input_kind": input_kind}
        content, content_type, n_cells = await runner.run(_report_upload, served, settings, upload, options)
    metrics.cells.labels("/v1/report").inc(n_cells)
    headers = provenance_headers(served.summary)
    if output_format != "json":
        stem = _UNSAFE_FILENAME.sub("_", _stem(upload.filename or "cells"))[:100] or "cells"
        suffix = "annotated.h5ad" if output_format == "h5ad" else "predictions.csv"
        headers["Content-Disposition"] = f'attachment; filename="{stem}.{suffix}"'
    return Response(content, media_type=content_type, headers=headers)


def _stem(filename: str) -> str:
    name = Path(filename).name
    for suffix in (".csv.gz", ".h5ad", ".csv", ".gz"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _read_upload(path: Path, filename: str, settings: Settings, options: dict[str, Any]) -> H5adCells:
    with path.open("rb") as handle:
        is_hdf5 = handle.read(len(HDF5_MAGIC)) == HDF5_MAGIC
    if is_hdf5 or filename.lower().endswith(".h5ad"):
        return read_h5ad_cells(
            path,
            layer=None,
            gene_column=options["gene_column"],
            input_kind=options["input_kind"],
            max_cells=settings.max_cells_per_report,
            max_expanded_bytes=settings.max_expanded_bytes,
        )
    if options["gene_column"] is not None:
        raise RequestInputError("gene_column applies to .h5ad files only; a CSV file names its genes in its header")
    return read_csv_cells(
        path,
        input_kind=options["input_kind"],
        max_cells=settings.max_cells_per_report,
        max_expanded_bytes=settings.max_expanded_bytes,
    )


def _unknown_checks(served: ServedModel) -> dict[str, Any]:
    """The model's Unknown checks, in the order they are applied: ``min_detected_genes``, ``novelty``
    (``method``, ``threshold``, ``quantile``; ``None`` when the model has no novelty check) and ``threshold``
    (the least top probability of a typed cell)."""
    description = served.description
    novelty = description.get("novelty")
    return {
        "min_detected_genes": description.get("min_detected_genes", 1),
        "novelty": None
        if novelty is None
        else {key: novelty.get(key) for key in ("method", "threshold", "quantile")},
        "threshold": served.predictor.threshold,
    }


def _novelty_scores(scores: np.ndarray) -> list[float | None]:
    """Each cell's novelty score rounded like the confidences; ``None`` where there is none (NaN)."""
    rounded = np.round(np.asarray(scores, dtype=np.float64), DECIMALS)
    return [None if not math.isfinite(value) else value for value in rounded.tolist()]


def _report_upload(
    served: ServedModel, settings: Settings, upload: UploadFile, options: dict[str, Any]
) -> tuple[bytes, str, int]:
    with tempfile.TemporaryDirectory(prefix="celltype-report-") as directory:
        path = Path(directory) / "upload"
        upload.file.seek(0)
        with path.open("wb") as handle:
            shutil.copyfileobj(upload.file, handle, 1 << 20)
        cells = _read_upload(path, upload.filename or "", settings, options)
        request = PredictionInput(cells.matrix, cells.genes, cells.cell_ids, cells.input_kind)
        align_upload(served, cells)
        annotation = annotate(served, request)
        if options["output_format"] == "h5ad":
            record = served_record(served, None, annotation.alignment.report())
            content = annotated_h5ad(
                cells, annotation.labels, annotation.confidence, Path(directory), annotation.unknown_reason, record
            )
            return content, H5AD_MEDIA_TYPE, request.n_cells
        if options["output_format"] == "csv":
            records = prediction_records(served, annotation, cell_ids=cells.cell_ids)
            return predictions_csv(records, served.predictor.classes), "text/csv; charset=utf-8", request.n_cells
        predictor = served.predictor
        embedding = predictor.embed(cells.matrix, cells.genes, input_kind=cells.input_kind)
        report = build_report(
            labels=annotation.labels,
            confidence=annotation.confidence,
            embedding=embedding,
            cell_ids=cells.cell_ids,
            classes=predictor.classes,
            threshold=predictor.threshold,
        )
        reasons = annotation.unknown_reason.astype(str)
        report["unknown"]["reasons"] = {reason: int((reasons == reason).sum()) for reason in UNKNOWN_REASONS[1:]}
        report["unknown"]["checks"] = _unknown_checks(served)
        report["cells"][UNKNOWN_REASON_COLUMN] = reasons.tolist()
        report["cells"][NOVELTY_SCORE_KEY] = _novelty_scores(annotation.novelty_score)
        payload = {
            "model": served.summary,
            "input": cells.input_kind,
            "gene_overlap": annotation.alignment.report(),
            **report,
        }
        return orjson.dumps(payload), JSON_MEDIA_TYPE, request.n_cells
