"""Writing the provenance record (:mod:`model.provenance`) into every kind of annotated output.

- ``.h5ad``: ``uns['celltype']`` (in memory with :func:`attach_to_adata`, or into a written file with
  :func:`write_h5ad_provenance`, which touches nothing else in the file);
- parquet: the ``celltype`` key of the schema metadata, as JSON (:func:`parquet_metadata`);
- CSV: a sidecar ``OUT.csv.json`` beside the file (:func:`write_csv_sidecar`);
- REST answers whose body is a file: ``X-Celltype-Model-*`` headers (:func:`provenance_headers`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
from anndata.io import write_elem

from model.provenance import CSV_SIDECAR_SUFFIX, PROVENANCE_KEY, for_h5ad, provenance_record
from service.model_store import ServedModel

MODEL_HEADERS = {"sha256": "X-Celltype-Model-Sha256", "version": "X-Celltype-Model-Version", "name": "X-Celltype-Model-Name"}
"""Response headers naming the model that made a CSV or ``.h5ad`` answer (present when known)."""


def attach_to_adata(adata: Any, record: dict[str, Any]) -> None:
    """Store ``record`` in ``adata.uns['celltype']`` (replacing an older one) in a form anndata can write."""
    adata.uns[PROVENANCE_KEY] = for_h5ad(record)


def write_h5ad_provenance(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Write ``record`` to ``uns['celltype']`` of the ``.h5ad`` file at ``path`` in place."""
    with h5py.File(path, "r+") as handle:
        if "uns" not in handle:
            write_elem(handle, "uns", {})
        uns = handle["uns"]
        if PROVENANCE_KEY in uns:
            del uns[PROVENANCE_KEY]
        write_elem(uns, PROVENANCE_KEY, for_h5ad(record))


def parquet_metadata(record: dict[str, Any]) -> dict[bytes, bytes]:
    """Schema metadata for a parquet output: ``{b'celltype': JSON of record}``."""
    return {PROVENANCE_KEY.encode(): json.dumps(record, sort_keys=True).encode()}


def csv_sidecar(path: Path) -> Path:
    """Where the record of the CSV output ``path`` goes: ``path`` + ``.json``."""
    return path.with_name(path.name + CSV_SIDECAR_SUFFIX)


def write_csv_sidecar(path: Path, record: dict[str, Any]) -> Path:
    """Write ``record`` as JSON beside the CSV output ``path`` (atomically); returns the sidecar's path."""
    sidecar = csv_sidecar(path)
    temporary = sidecar.with_name(f".{sidecar.name}.tmp")
    temporary.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, sidecar)
    return sidecar


def provenance_headers(model: dict[str, Any]) -> dict[str, str]:
    """``X-Celltype-Model-Sha256`` / ``-Version`` / ``-Name`` for a model summary or record ``model``."""
    digest = model.get("sha256", model.get("bundle_sha256"))
    values = {"sha256": digest, "version": model.get("version"), "name": model.get("name")}
    return {MODEL_HEADERS[key]: str(value) for key, value in values.items() if value is not None}


def served_record(served: ServedModel, threshold: float | None, gene_overlap: dict[str, Any]) -> dict[str, Any]:
    """The provenance record of an answer of the served model (URIs without credentials)."""
    predictor = served.predictor
    return provenance_record(
        predictor.bundle,
        served.description,
        threshold=predictor.threshold if threshold is None else threshold,
        gene_overlap=gene_overlap,
    )
