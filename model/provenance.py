"""What made an annotation: the record every annotated output carries.

``celltype score``, ``celltype.annotate`` and the REST service's annotated files all write the same
record (:func:`provenance_record`):

- ``model``: ``uri``, ``name``, ``version``, ``alias``, ``run_id`` (the registry facts known) and
  ``sha256``, the bundle digest (:attr:`model.bundle.ModelBundle.sha256`);
- ``threshold``: the confidence below which cells were labelled ``"Unknown"``;
- ``celltype_version``: the installed celltype package that scored;
- ``scored_at``: when (ISO 8601, UTC);
- ``gene_overlap``: how the input's genes matched the model's (:meth:`model.genes.GeneAlignment.report`;
  tables of several inputs map each ``source_file`` to its report).

Where it goes: ``uns['celltype']`` of an ``.h5ad``, the ``celltype`` key of a parquet file's schema
metadata (JSON), and a sidecar ``OUT.csv.json`` beside a CSV file.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
from datetime import UTC, datetime
from typing import Any

import numpy as np

from model.bundle import ModelBundle

PROVENANCE_KEY = "celltype"
"""``uns`` key of an annotated ``.h5ad`` and the parquet schema-metadata key holding the record."""
CSV_SIDECAR_SUFFIX = ".json"
"""A CSV output ``OUT.csv`` gets its record in ``OUT.csv.json``."""
MODEL_SOURCE_KEYS = ("uri", "name", "version", "alias", "run_id")
"""The registry facts copied from a predictor's source into the record's ``model``."""

_URI_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")


def redact_uri(value: Any) -> Any:
    """``value`` with any ``user:password@`` removed from URIs inside it (strings only; others pass)."""
    return _URI_CREDENTIALS.sub("", value) if isinstance(value, str) else value


@functools.cache
def celltype_version() -> str:
    """The installed celltype package's version (``"unknown"`` when run from a source tree not installed)."""
    try:
        return importlib.metadata.version("celltype")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def model_facts(bundle: ModelBundle, source: dict[str, Any]) -> dict[str, Any]:
    """The record's ``model``: the known registry facts of ``source`` and the bundle digest as ``sha256``."""
    facts = {key: source[key] for key in MODEL_SOURCE_KEYS if source.get(key) is not None}
    if "uri" in facts:
        facts["uri"] = redact_uri(str(facts["uri"]))
    facts["sha256"] = bundle.sha256 or source.get("bundle_sha256")
    return facts


def provenance_record(
    bundle: ModelBundle,
    source: dict[str, Any],
    *,
    threshold: float,
    gene_overlap: dict[str, Any],
    scored_at: datetime | None = None,
) -> dict[str, Any]:
    """The provenance record of one annotation (see the module docstring for its keys)."""
    return {
        "model": model_facts(bundle, source),
        "threshold": float(threshold),
        "celltype_version": celltype_version(),
        "scored_at": (scored_at or datetime.now(UTC)).isoformat(timespec="seconds"),
        "gene_overlap": gene_overlap,
    }


def for_h5ad(value: Any) -> Any:
    """``value`` as anndata can store it in ``uns``: ``None`` left out, lists as arrays (strings as str)."""
    if isinstance(value, dict):
        return {str(key): for_h5ad(item) for key, item in value.items() if item is not None}
    if isinstance(value, list | tuple):
        if all(isinstance(item, str) for item in value):
            return np.asarray(value, dtype=object)
        return np.asarray(value)
    return value
