"""``POST /v1/report`` under TestClient: the report's structure, the map, CSV uploads, downloads, errors, auth."""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.web.report import HISTOGRAM_BINS
from tests.web.conftest import CLASSES, GENES, MIN_DETECTED_GENES, cells_csv_text, cells_h5ad

ClientFactory = Callable[..., TestClient]


@pytest.fixture
def client(web_client: ClientFactory) -> TestClient:
    """The app with default settings."""
    return web_client()


def post(client: TestClient, name: str, content: bytes, **params: str) -> object:
    """Upload ``content`` as ``name`` to /v1/report."""
    return client.post("/v1/report", params=params, files={"file": (name, content)})


def assert_detail(response: object, status: int, *fragments: str) -> None:
    """``response`` is ``status`` with a plain-words ``detail`` containing every fragment."""
    assert response.status_code == status, response.text
    detail = str(response.json()["detail"])
    for fragment in fragments:
        assert fragment in detail, detail
    assert "Traceback" not in response.text


def test_report_structure(client: TestClient, tmp_path: Path) -> None:
    path = cells_h5ad(tmp_path / "cells.h5ad", 240)
    response = post(client, "cells.h5ad", path.read_bytes())
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["n_cells"] == 240
    assert report["input"] == "counts"
    assert report["gene_overlap"]["n_matched"] == len(GENES)
    assert report["model"]["bundle_sha256"]
    labels = [row["label"] for row in report["counts"]]
    assert sorted(labels) == sorted([*CLASSES, "Unknown"])
    counts = [row["count"] for row in report["counts"]]
    assert counts == sorted(counts, reverse=True) and sum(counts) == 240
    cells = report["cells"]
    assert cells["cell_id"][:2] == ["cell-00000", "cell-00001"]
    assert len(cells["label"]) == len(cells["confidence"]) == 240
    by_label = {row["label"]: row["count"] for row in report["counts"]}
    assert by_label == {label: cells["label"].count(label) for label in by_label}
    assert report["unknown"]["count"] == by_label["Unknown"]
    assert report["unknown"]["share"] == pytest.approx(by_label["Unknown"] / 240, abs=1e-6)
    unknown_confidence = [c for c, label in zip(cells["confidence"], cells["label"], strict=True) if label == "Unknown"]
    assert all(c < report["threshold"] + 1e-4 for c in unknown_confidence)
    histogram = report["confidence_histogram"]
    assert len(histogram["edges"]) == HISTOGRAM_BINS + 1 and len(histogram["counts"]) == HISTOGRAM_BINS
    assert sum(histogram["counts"]) == 240


def test_map_matches_the_model_and_separates_types(client: TestClient, tmp_path: Path) -> None:
    path = cells_h5ad(tmp_path / "cells.h5ad", 400)
    report = post(client, "cells.h5ad", path.read_bytes()).json()
    cell_map = report["map"]
    assert cell_map["n_points"] == 400 and not cell_map["subsampled"]
    assert cell_map["cell"] == list(range(400))
    assert len(cell_map["x"]) == len(cell_map["y"]) == 400
    assert 0 < cell_map["explained_variance"][1] <= cell_map["explained_variance"][0] <= 1
    points = np.column_stack([cell_map["x"], cell_map["y"]])
    labels = np.array(report["cells"]["label"])
    centres = {label: points[labels == label].mean(axis=0) for label in CLASSES if (labels == label).sum() > 5}
    spread = np.mean([points[labels == label].std(axis=0).mean() for label in centres])
    gaps = [np.linalg.norm(a - b) for i, a in enumerate(centres.values()) for b in list(centres.values())[i + 1 :]]
    assert min(gaps) > spread, "cells of different predicted types should sit apart on the map"


def test_csv_and_gzip_uploads_give_the_same_report_as_h5ad(client: TestClient, tmp_path: Path) -> None:
    h5ad_report = post(client, "cells.h5ad", cells_h5ad(tmp_path / "cells.h5ad", 120).read_bytes()).json()
    text = cells_csv_text(120).encode()
    csv_report = post(client, "cells.csv", text).json()
    gz_report = post(client, "cells.csv.gz", gzip.compress(text)).json()
    for report in (csv_report, gz_report):
        assert report["cells"] == h5ad_report["cells"]
        assert report["counts"] == h5ad_report["counts"]
        assert report["map"] == h5ad_report["map"]


def test_downloads_are_annotated_h5ad_and_csv(client: TestClient, tmp_path: Path) -> None:
    content = cells_h5ad(tmp_path / "cells.h5ad", 60).read_bytes()
    report = post(client, "cells.h5ad", content).json()
    h5ad_answer = post(client, "cells.h5ad", content, format="h5ad")
    assert h5ad_answer.status_code == 200
    assert 'filename="cells.annotated.h5ad"' in h5ad_answer.headers["content-disposition"]
    annotated = ad.read_h5ad(io.BytesIO(h5ad_answer.content))
    assert list(annotated.obs["predicted_cell_type"].astype(str)) == report["cells"]["label"]
    assert list(annotated.obs["unknown_reason"].astype(str)) == report["cells"]["unknown_reason"]
    assert report["unknown"]["count"] == sum(report["unknown"]["reasons"].values())
    csv_answer = post(client, "my cells.csv.gz", gzip.compress(cells_csv_text(60).encode()), format="csv")
    assert 'filename="my_cells.predictions.csv"' in csv_answer.headers["content-disposition"]
    lines = csv_answer.text.splitlines()
    assert lines[0] == "cell_id,predicted_cell_type,confidence,unknown_reason"
    assert [line.split(",")[1] for line in lines[1:]] == report["cells"]["label"]


def test_gene_column_picks_the_identifiers(client: TestClient, tmp_path: Path) -> None:
    path = cells_h5ad(tmp_path / "cells.h5ad", 30, genes=[f"SYM{i}" for i in range(len(GENES))])
    assert_detail(post(client, "cells.h5ad", path.read_bytes()), 422, "gene")
    overlap = post(client, "cells.h5ad", path.read_bytes(), gene_column="ensembl_id").json()["gene_overlap"]
    assert overlap["n_matched"] == len(GENES) and overlap["n_missing"] == 0
    assert_detail(post(client, "cells.h5ad", path.read_bytes(), gene_column="nope"), 422, "nope", "ensembl_id")


@pytest.mark.parametrize(
    ("name", "content", "status", "fragment"),
    [
        ("cells.csv", b"", 422, "empty"),
        ("cells.csv", b"cell_id\nc1\n", 422, "names no genes"),
        ("cells.csv", ("cell_id," + ",".join(GENES) + "\n").encode(), 422, "no cells"),
        ("cells.csv", ("cell_id," + ",".join(GENES) + "\nc1," + ",".join(["x"] * len(GENES)) + "\n").encode(), 422,
         "'x' (row 2"),
        ("cells.csv", ("cell_id," + ",".join(GENES) + "\nc1," + ",".join(["1"] * (len(GENES) + 3)) + "\n").encode(),
         422, "could not be parsed"),
        ("cells.csv.gz", b"\x1f\x8b\x08\x00garbage", 400, "damaged"),
        ("cells.csv", b"cell_id,\xff\xfe\n", 400, "UTF-8"),
        ("cells.h5ad", b"not hdf5 at all", 400, "HDF5"),
    ],
)
def test_unreadable_uploads_are_explained(client: TestClient, name: str, content: bytes, status: int, fragment: str) -> None:
    assert_detail(post(client, name, content), status, fragment)


def test_log_data_sent_as_counts_is_refused(client: TestClient) -> None:
    text = cells_csv_text(20).replace(",1,", ",1.5,").encode()
    assert_detail(post(client, "cells.csv", text, input="counts"), 422, "counts")


def test_limits_answer_413(web_client: ClientFactory, tmp_path: Path) -> None:
    small = web_client(max_cells_per_report=50, max_body_bytes=200_000)
    assert_detail(post(small, "cells.h5ad", cells_h5ad(tmp_path / "c.h5ad", 60).read_bytes()), 413, "60 cells", "50")
    assert_detail(post(small, "cells.csv", cells_csv_text(60).encode()), 413, "more than 50 cells")
    assert post(small, "cells.csv", b"x" * 300_000).status_code == 413
    tiny = web_client(max_expanded_bytes=2048)
    assert_detail(post(tiny, "cells.csv.gz", gzip.compress(cells_csv_text(40).encode())), 413, "expands")


def test_report_needs_the_api_key_but_the_page_does_not(web_client: ClientFactory, tmp_path: Path) -> None:
    client = web_client(api_key="s3cret")
    content = cells_h5ad(tmp_path / "cells.h5ad", 10).read_bytes()
    assert_detail(post(client, "cells.h5ad", content), 401, "API key")
    wrong = client.post("/v1/report", files={"file": ("c.h5ad", content)}, headers={"X-API-Key": "nope"})
    assert wrong.status_code == 401
    for headers in ({"X-API-Key": "s3cret"}, {"Authorization": "Bearer s3cret"}):
        answer = client.post("/v1/report", files={"file": ("c.h5ad", content)}, headers=headers)
        assert answer.status_code == 200, answer.text
    for path in ("/", "/web/app.js", "/web/app.css", "/docs", "/redoc"):
        assert client.get(path).status_code == 200, path


def test_wrong_content_type_and_missing_field(client: TestClient) -> None:
    assert_detail(client.post("/v1/report", json={"x": 1}), 415, "multipart/form-data")
    assert_detail(client.post("/v1/report", files={"other": ("c.csv", b"a")}), 422, "'file'")
    assert_detail(post(client, "c.csv", cells_csv_text(5).encode(), gene_column="symbol"), 422, ".h5ad files only")


def test_report_says_why_each_cell_is_unknown(web_client: ClientFactory, checked_bundle_dir: Path) -> None:
    client = web_client(model_uri=str(checked_bundle_dir))
    text = cells_csv_text(80, seed=2, empty=[0, 41])
    report = post(client, "cells.csv", text.encode()).json()
    cells, unknown = report["cells"], report["unknown"]
    assert cells["unknown_reason"][0] == cells["unknown_reason"][41] == "no_counts"
    assert list(unknown["reasons"]) == ["no_counts", "too_few_genes", "unlike_training", "low_confidence"]
    assert unknown["reasons"]["no_counts"] == 2 and sum(unknown["reasons"].values()) == unknown["count"]
    for label, reason in zip(cells["label"], cells["unknown_reason"], strict=True):
        assert (label == "Unknown") == (reason != "")
    checks = unknown["checks"]
    assert checks["min_detected_genes"] == MIN_DETECTED_GENES and checks["threshold"] == report["threshold"]
    assert checks["novelty"]["method"] == "input_pca" and checks["novelty"]["quantile"] == pytest.approx(0.999)
    scores = cells["novelty_score"]
    assert len(scores) == 80 and all(isinstance(score, float) for score in scores)
    for score, reason in zip(scores, cells["unknown_reason"], strict=True):
        if reason == "":
            assert score <= checks["novelty"]["threshold"]
    model = client.get("/v1/model").json()
    assert model["novelty"]["threshold"] == pytest.approx(checks["novelty"]["threshold"])


def test_report_without_a_novelty_check_has_no_scores(client: TestClient) -> None:
    report = post(client, "cells.csv", cells_csv_text(10, empty=[4]).encode()).json()
    assert report["cells"]["novelty_score"] == [None] * 10
    assert report["unknown"]["checks"] == {"min_detected_genes": 1, "novelty": None, "threshold": report["threshold"]}
    assert report["cells"]["unknown_reason"][4] == "no_counts" and report["unknown"]["reasons"]["unlike_training"] == 0
