"""The celltype model as an MLflow pyfunc, logged as code: no pickle anywhere in the artifact.

:func:`log_pyfunc` logs ``model/pyfunc_model.py`` (models-from-code, ``mlflow.models.set_model``) with
the bundle's two files as the artifact ``bundle``, a clean copy of the ``model`` package as
``code_paths`` (so the serving side needs only the pinned requirements) and the bundle digest as
``model_config``. The result serves with ``mlflow models serve -m models:/NAME@ALIAS --env-manager
local`` (which needs ``uvicorn`` on ``PATH``: activate the venv or put its ``bin`` first); its
``/invocations`` takes a table of raw counts whose columns are gene names and answers one row per cell:
``predicted_cell_type``, ``confidence``, ``unknown_reason`` and one ``prob_<class>`` column per cell type.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import ColSpec, Schema

from model.bundle import MANIFEST_FILE, WEIGHTS_FILE, load_bundle
from model.errors import InputError
from model.outputs import CONFIDENCE_COLUMN, LABEL_COLUMN, PYFUNC_PROBABILITY_PREFIX, UNKNOWN_REASON_COLUMN
from model.predict import Predictor
from model.registry.fetch import BUNDLE_ARTIFACT_NAME

CODE_FILE = Path(__file__).with_name("pyfunc_model.py")
"""The models-from-code file logged as the pyfunc's ``python_model``."""
REQUIREMENTS = ("mlflow", "torch", "numpy", "scipy", "pandas", "safetensors")
"""Packages the pyfunc needs where it is served (pinned to the versions installed at logging time)."""


def probability_column(cell_type: str) -> str:
    """Name of the output column holding the probability of ``cell_type``."""
    return f"{PYFUNC_PROBABILITY_PREFIX}{cell_type}"


def predictions_frame(predictor: Predictor, model_input: pd.DataFrame) -> pd.DataFrame:
    """Annotate the cells of ``model_input`` (rows = cells, columns = gene names, raw counts).

    Returns one row per cell: ``predicted_cell_type``, ``confidence``, ``unknown_reason`` (why the cell is
    ``"Unknown"``, ``""`` otherwise) and ``prob_<class>`` columns.

    Raises:
        InputError: the table is not numeric, has negative / non-integer / missing values, or its
            genes do not overlap the model's enough.
    """
    if not isinstance(model_input, pd.DataFrame):
        raise InputError(
            f"expected a table (pandas DataFrame) of cells x genes, got {type(model_input).__name__}"
        )
    non_numeric = [
        str(c) for c, dtype in model_input.dtypes.items() if not pd.api.types.is_numeric_dtype(dtype)
    ]
    if non_numeric:
        raise InputError(
            f"gene columns must hold numbers (raw counts); {len(non_numeric)} do not, e.g. {non_numeric[:3]}"
        )
    annotation = predictor.annotate(
        model_input.to_numpy(dtype=np.float32), [str(c) for c in model_input.columns]
    )
    columns: dict[str, Any] = {
        LABEL_COLUMN: annotation.labels.astype(str),
        CONFIDENCE_COLUMN: annotation.confidence.astype(np.float64),
        UNKNOWN_REASON_COLUMN: annotation.unknown_reason.astype(str),
    }
    for index, cell_type in enumerate(predictor.classes):
        columns[probability_column(cell_type)] = annotation.probabilities[:, index].astype(np.float64)
    return pd.DataFrame(columns, index=model_input.index)


class CellTypePythonModel(mlflow.pyfunc.PythonModel):
    """MLflow ``PythonModel`` over a celltype bundle, loaded with :func:`model.bundle.load_bundle`."""

    def load_context(self, context: Any) -> None:
        """Load the bundle artifact, checking it against the digest recorded when it was logged."""
        expected = (context.model_config or {}).get("bundle_sha256")
        bundle = load_bundle(context.artifacts[BUNDLE_ARTIFACT_NAME], expected_sha256=expected)
        self.predictor = Predictor(bundle, source={"bundle_sha256": bundle.sha256})

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Cell types for a table of raw counts (rows = cells, columns = gene names).

        Bad input raises ``MlflowException(INVALID_PARAMETER_VALUE)``, which the MLflow scoring
        server answers with HTTP 400 and the message.
        """
        try:
            return predictions_frame(self.predictor, model_input)
        except InputError as exc:
            raise MlflowException.invalid_parameter_value(str(exc)) from None


def signature_for(genes: list[str], classes: list[str]) -> ModelSignature:
    """Input: one optional double column per gene; output: label, confidence, unknown reason and per-class
    probabilities."""
    inputs = Schema([ColSpec("double", gene, required=False) for gene in genes])
    outputs = Schema(
        [ColSpec("string", LABEL_COLUMN), ColSpec("double", CONFIDENCE_COLUMN), ColSpec("string", UNKNOWN_REASON_COLUMN)]
        + [ColSpec("double", probability_column(c)) for c in classes]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example(genes: list[str], n_cells: int = 2) -> pd.DataFrame:
    """A small deterministic table of whole-number counts over ``genes``."""
    counts = (np.arange(n_cells)[:, None] + np.arange(len(genes))[None, :]) % 7
    return pd.DataFrame(counts.astype(np.float64), columns=list(genes))


def pinned_requirements() -> list[str]:
    """``name==version`` for :data:`REQUIREMENTS`, without local version labels such as ``+cpu``."""
    return [f"{name}=={importlib.metadata.version(name).split('+', 1)[0]}" for name in REQUIREMENTS]


def _copy_package_sources(destination: Path) -> Path:
    """Copy the ``.py`` files of the ``model`` package into ``destination/model`` (no caches)."""
    package = Path(__file__).resolve().parent
    target = destination / package.name
    target.mkdir(parents=True)
    for source in sorted(package.glob("*.py")):
        shutil.copy2(source, target / source.name)
    return target


def log_pyfunc(bundle_dir: str | os.PathLike[str], *, name: str = "model") -> ModelInfo:
    """Log the bundle in ``bundle_dir`` as a pickle-free pyfunc model (inside the active run, if any).

    Args:
        bundle_dir: a bundle written by :func:`model.bundle.save_bundle` (verified before logging).
        name: the logged model's name.

    Returns:
        MLflow's ``ModelInfo`` (``model_uri``, ``model_id``, ...).
    """
    bundle = load_bundle(bundle_dir)
    with tempfile.TemporaryDirectory(prefix="celltype-pyfunc-") as staging:
        staged_bundle = Path(staging) / BUNDLE_ARTIFACT_NAME
        staged_bundle.mkdir()
        for filename in (MANIFEST_FILE, WEIGHTS_FILE):
            shutil.copy2(Path(bundle_dir) / filename, staged_bundle / filename)
        package = _copy_package_sources(Path(staging) / "code")
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(CODE_FILE),
            artifacts={BUNDLE_ARTIFACT_NAME: str(staged_bundle)},
            code_paths=[str(package)],
            model_config={"bundle_sha256": bundle.sha256},
            signature=signature_for(bundle.genes, bundle.classes),
            input_example=input_example(bundle.genes),
            pip_requirements=pinned_requirements(),
            metadata={"bundle_sha256": bundle.sha256, "gene_list_hash": bundle.gene_list_hash},
        )
