"""POST /invocations answers exactly like `mlflow models serve` with the celltype pyfunc."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from model import pyfunc

from .conftest import CLASSES, GENES, assert_client_error, random_counts


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return pd.DataFrame(random_counts(12, seed=5), columns=GENES)


@pytest.fixture(scope="module")
def expected(predictor, frame) -> list[dict]:
    """What MLflow's scoring server answers: the pyfunc's frame as records."""
    return pyfunc.predictions_frame(predictor, frame).to_dict(orient="records")


def assert_same_predictions(response, expected) -> None:
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [list(p) for p in predictions] == [list(e) for e in expected]
    for got, want in zip(predictions, expected, strict=True):
        for text in ("predicted_cell_type", "unknown_reason"):
            assert got[text] == want[text]
        numbers = [k for k in want if k not in ("predicted_cell_type", "unknown_reason")]
        np.testing.assert_allclose([got[k] for k in numbers], [want[k] for k in numbers], atol=1e-7)


def test_dataframe_split(client, frame, expected):
    body = {"dataframe_split": frame.to_dict(orient="split")}
    assert_same_predictions(client.post("/invocations", json=body), expected)
    assert list(client.post("/invocations", json=body).json()["predictions"][0]) == [
        "predicted_cell_type",
        "confidence",
        "unknown_reason",
        *(f"prob_{c}" for c in CLASSES),
    ]


def test_dataframe_split_without_columns_uses_the_model_gene_order(client, frame, expected):
    body = {"dataframe_split": {"data": frame.to_numpy().tolist()}}
    assert_same_predictions(client.post("/invocations", json=body), expected)


def test_dataframe_records(client, frame, expected):
    body = {"dataframe_records": frame.to_dict(orient="records")}
    assert_same_predictions(client.post("/invocations", json=body), expected)


@pytest.mark.parametrize("key", ["instances", "inputs"])
def test_instances_and_inputs_as_rows_records_or_columns(client, frame, expected, key):
    for value in (frame.to_numpy().tolist(), frame.to_dict(orient="records"), frame.to_dict(orient="list")):
        assert_same_predictions(client.post("/invocations", json={key: value}), expected)


def test_csv_and_parquet(client, frame, expected):
    csv = client.post("/invocations", content=frame.to_csv(index=False).encode(), headers={"content-type": "text/csv"})
    assert_same_predictions(csv, expected)
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    parquet = client.post(
        "/invocations", content=buffer.getvalue(), headers={"content-type": "application/vnd.apache.parquet"}
    )
    assert_same_predictions(parquet, expected)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"dataframe_split": {"columns": GENES, "data": [[1.5] * 40]}}, "non-integer values"),
        ({"dataframe_split": {"columns": GENES, "data": [[1] * 39]}}, "has 39 values but 40"),
        ({"dataframe_split": {"columns": GENES, "data": [[1] * 40]}, "instances": [[1] * 40]}, "exactly one of"),
        ({"data": [[1] * 40]}, "exactly one of"),
        ({"dataframe_records": [{"G0": 1}, {"G1": 2}]}, "same genes"),
        ({"instances": [[1, 2, 3]]}, "model's gene order"),
        ({"instances": [["a"] * 40]}, "send numbers only"),
        ({"inputs": {"G0": [1, 2], "G1": [1]}}, "same number of cells"),
        ({"dataframe_split": {"columns": GENES, "data": [[1] * 40]}, "params": {"input": "lognorm"}}, "no params"),
    ],
)
def test_bad_bodies_answer_like_mlflow(client, body, fragment):
    response = client.post("/invocations", json=body)
    assert_client_error(response, 400, fragment)
    assert response.json()["error_code"] in ("BAD_REQUEST", "INVALID_PARAMETER_VALUE")
    assert fragment in response.json()["message"]


def test_unreadable_tables_and_content_types(client):
    assert_client_error(
        client.post("/invocations", content=b"\x00\x01", headers={"content-type": "application/vnd.apache.parquet"}),
        400,
        "not a readable",
    )
    assert_client_error(client.post("/invocations", content=b"G0,G1\n", headers={"content-type": "text/csv"}), 400, "no rows")
    response = client.post("/invocations", content=b"{}", headers={"content-type": "text/plain"})
    assert_client_error(response, 415, "text/csv")
    assert response.json()["error_code"] == "BAD_REQUEST"


def test_too_many_rows_is_413(make_client):
    client = make_client(max_cells_per_request=3)
    body = {"dataframe_split": {"columns": GENES, "data": random_counts(4).tolist()}}
    assert_client_error(client.post("/invocations", json=body), 413, "at most 3")
