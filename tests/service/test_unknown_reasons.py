"""Every way cells are annotated says why a cell is "Unknown": REST JSON/CSV/h5ad, /invocations, scoring."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from fastapi.testclient import TestClient

from model.bundle import UNKNOWN_LABEL, save_bundle
from model.novelty import NO_COUNTS, TOO_FEW_GENES, UNKNOWN_REASONS, UNLIKE_TRAINING
from model.predict import Predictor
from service.scoring.job import ScoringJob, run_scoring
from service.settings import Settings
from tests.factories import add_unknown_checks, random_counts

from .conftest import GENES, make_bundle, start_client

MIN_GENES = 5
DEGENERATE_REASONS = [NO_COUNTS, TOO_FEW_GENES, UNLIKE_TRAINING]


@pytest.fixture(scope="module")
def checked_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A served bundle with a novelty detector, ``min_detected_genes = 5`` and a low confidence threshold."""
    bundle = add_unknown_checks(
        make_bundle(threshold=0.05), random_counts(600, seed=3), min_detected_genes=MIN_GENES, method="mahalanobis"
    )
    path = tmp_path_factory.mktemp("unknown") / "bundle"
    save_bundle(bundle, path)
    return path


@pytest.fixture(scope="module")
def predictor(checked_dir: Path) -> Predictor:
    return Predictor.load(checked_dir, device="cpu")


@pytest.fixture(scope="module")
def client(checked_dir: Path) -> Iterator[TestClient]:
    served = start_client(Settings(model_uri=str(checked_dir), device="cpu"))
    yield served
    served.__exit__(None, None, None)


@pytest.fixture(scope="module")
def cells() -> np.ndarray:
    """No counts; one detected gene; far from training; then 9 ordinary cells."""
    degenerate = np.zeros((3, len(GENES)), dtype=np.float32)
    degenerate[1, 3] = 7
    degenerate[2, : len(GENES) // 2] = 10_000
    return np.vstack([degenerate, random_counts(9, seed=21)])


@pytest.fixture(scope="module")
def expected(predictor: Predictor, cells: np.ndarray) -> list[str]:
    reasons = predictor.annotate(cells).unknown_reason.tolist()
    assert reasons[:3] == DEGENERATE_REASONS and "" in reasons[3:]
    return reasons


@pytest.fixture(scope="module")
def h5ad_file(cells: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    adata = ad.AnnData(sp.csr_matrix(cells))
    adata.obs_names = [f"cell{i}" for i in range(len(cells))]
    adata.var_names = GENES
    path = tmp_path_factory.mktemp("cells") / "cells.h5ad"
    adata.write_h5ad(path)
    return path


def test_rest_json_and_model_description(client, cells, expected):
    response = client.post("/v1/predict", json={"genes": GENES, "cells": cells.tolist()})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["unknown_reason"] for p in predictions] == expected
    assert all((p["label"] == UNKNOWN_LABEL) == (p["unknown_reason"] != "") for p in predictions)
    model = client.get("/v1/model").json()
    assert model["min_detected_genes"] == MIN_GENES and model["novelty"]["method"] == "mahalanobis"


def test_rest_upload_csv_and_h5ad(client, h5ad_file, expected):
    def upload(output_format: str):
        files = {"file": ("cells.h5ad", h5ad_file.read_bytes(), "application/x-hdf5")}
        response = client.post("/v1/predict/h5ad", params={"format": output_format}, files=files)
        assert response.status_code == 200, response.text
        return response

    table = pd.read_csv(io.StringIO(upload("csv").text), keep_default_na=False)
    assert table["unknown_reason"].tolist() == expected
    annotated = ad.read_h5ad(io.BytesIO(upload("h5ad").content))
    assert annotated.obs["unknown_reason"].astype(str).tolist() == expected
    assert list(annotated.obs["unknown_reason"].cat.categories) == list(UNKNOWN_REASONS)


def test_invocations(client, cells, expected):
    frame = pd.DataFrame(cells, columns=GENES)
    response = client.post("/invocations", json={"dataframe_split": frame.to_dict(orient="split")})
    assert response.status_code == 200, response.text
    assert [p["unknown_reason"] for p in response.json()["predictions"]] == expected


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".h5ad"])
def test_scoring_outputs_and_summary(checked_dir, h5ad_file, expected, tmp_path, suffix):
    out = tmp_path / f"scores{suffix}"
    summary = run_scoring(ScoringJob(inputs=(h5ad_file,), model=str(checked_dir), out=out, progress=False))
    if suffix == ".h5ad":
        reasons = ad.read_h5ad(out).obs["unknown_reason"].astype(str).tolist()
    elif suffix == ".csv":
        reasons = pd.read_csv(out, keep_default_na=False)["unknown_reason"].tolist()
    else:
        reasons = pd.read_parquet(out)["unknown_reason"].tolist()
    assert reasons == expected
    assert summary.reason_counts == {reason: expected.count(reason) for reason in UNKNOWN_REASONS[1:]}
    assert any(line.startswith("unknown reasons: no_counts 1, too_few_genes 1") for line in summary.lines())
