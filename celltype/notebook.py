"""The notebook API: :func:`annotate` (an AnnData in, the same AnnData annotated out) and :func:`load`."""

from __future__ import annotations

import os
from typing import Any

from model.predict import Predictor
from model.provenance import provenance_record
from service.provenance_io import attach_to_adata
from service.scoring.in_memory import score_adata
from service.scoring.job import DEFAULT_TOP_K


def load(
    model: str | os.PathLike[str], *, tracking_uri: str | None = None, device: str = "auto", **options: Any
) -> Predictor:
    """The model at ``model``, ready to predict.

    Args:
        model: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a bundle directory.
        tracking_uri: the MLflow registry of ``models:/`` URIs (default ``MLFLOW_TRACKING_URI``, else
            ``./mlflow.db``); the downloaded bundle's digest is verified.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        options: passed to :class:`~model.predict.Predictor` (``chunk_size``, ``min_overlap``).
    """
    return Predictor.load(model, tracking_uri=tracking_uri, device=device, **options)


def annotate(
    adata: Any,
    model: str | os.PathLike[str] | Predictor,
    *,
    top_k: int = DEFAULT_TOP_K,
    input_kind: str = "auto",
    layer: str | None = None,
    gene_column: str | None = None,
    tracking_uri: str | None = None,
    device: str = "auto",
    copy: bool = False,
) -> Any:
    """Annotate every cell of ``adata`` with its cell type, as ``celltype score`` annotates a file.

    Adds to ``obs``: ``predicted_cell_type`` (``"Unknown"`` where the model will not type the cell),
    ``confidence``, ``unknown_reason`` and the top-k columns (``top1_label``, ``top1_prob``, ...; one
    ``probability:<class>`` column per class when ``top_k`` is at least the number of classes). Stores
    the provenance record in ``uns['celltype']`` (model URI, name, version, ``sha256`` digest,
    threshold, celltype version, time, gene overlap).

    Args:
        adata: an AnnData in memory with raw counts (or log1p CP10k values) in ``X`` or ``layer``.
        model: a registry URI or bundle directory (see :func:`load`), or a loaded Predictor.
        top_k: how many most likely types to add (0: none).
        input_kind: ``"auto"`` (detect), ``"counts"`` or ``"lognorm"``.
        layer: read ``layers[layer]`` instead of ``X``.
        gene_column: name genes by ``var[gene_column]`` instead of ``var_names``; any identifier the
            model was trained with matches (symbols, Ensembl IDs, ...).
        tracking_uri, device: see :func:`load` (ignored for a loaded Predictor).
        copy: annotate and return a copy, leaving ``adata`` unchanged.

    Returns:
        The annotated AnnData (``adata`` itself unless ``copy``).

    Raises:
        CellTypeError: (subclasses) with a message saying what to fix: genes that do not match the
            model, wrong values for the input kind, a missing layer or column, a model that cannot load.
    """
    predictor = model if isinstance(model, Predictor) else load(model, tracking_uri=tracking_uri, device=device)
    target = adata.copy() if copy else adata
    frame, prepared = score_adata(
        predictor, target, top_k=top_k, input_kind=input_kind, layer=layer, gene_column=gene_column
    )
    for name, column in frame.items():
        target.obs[name] = column
    record = provenance_record(
        predictor.bundle,
        predictor.source,
        threshold=predictor.threshold,
        gene_overlap=prepared.alignment.report(),
    )
    attach_to_adata(target, record)
    return target
