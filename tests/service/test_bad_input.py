"""Every kind of bad input is a 4xx whose ``detail`` says what to fix; never a 500 or a traceback."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from .conftest import GENES, assert_client_error, predict_body, random_counts

CELL = random_counts(1)[0].tolist()


def dumps(value) -> bytes:
    return json.dumps(value).encode()


def row(**changes) -> list:
    values = list(CELL)
    for index, value in changes.items():
        values[int(index[1:])] = value
    return values


JSON_CASES = {
    "malformed JSON": (b'{"genes": ["G0"], "cells": [[1, 2]', 400, "not valid JSON"),
    "empty body": (b"", 400, "empty"),
    "not an object": (b"[1, 2, 3]", 422, "JSON object"),
    "not UTF-8": (b'{"genes": ["\xff"], "cells": [[1]]}', 400, "not valid JSON"),
    "NaN literal": (b'{"genes": ["G0"], "cells": [[NaN]]}', 422, "NaN or Infinity"),
    "Infinity literal": (b'{"genes": ["G0"], "cells": [[Infinity]]}', 422, "NaN or Infinity"),
    "huge number": (
        dumps({"genes": GENES, "cells": [[1] * 40]}).replace(b"[1,", b"[1e400,"),
        422,
        "out of range",
    ),
    "huge integer": (
        dumps({"genes": GENES, "cells": [[1] * 40]}).replace(b"[1,", b"[" + b"9" * 30 + b","),
        422,
        "out of range",
    ),
    "missing genes": (dumps({"cells": [CELL]}), 422, "'genes' is required"),
    "genes not strings": (dumps({"genes": [1, 2], "cells": [[1, 2]]}), 422, "genes[0]"),
    "unknown field": (dumps({**predict_body([CELL]), "cels": []}), 422, "unknown field(s) ['cels']"),
    "neither cells nor csr": (dumps({"genes": GENES}), 422, "exactly one of 'cells'"),
    "both cells and csr": (
        dumps({**predict_body([CELL]), "csr": {"indptr": [0], "indices": [], "data": []}}),
        422,
        "exactly one of 'cells'",
    ),
    "empty cells": (dumps({"genes": GENES, "cells": []}), 422, "send at least one cell"),
    "cells not a list": (dumps({"genes": GENES, "cells": 3}), 422, "list of rows"),
    "flat cells": (dumps({"genes": GENES, "cells": CELL}), 422, "'cells[0]' must be a list"),
    "ragged rows": (
        dumps({"genes": GENES, "cells": [CELL, CELL[:-1]]}),
        422,
        "'cells[1]' has 39 values but 40",
    ),
    "wrong row length": (dumps({"genes": GENES, "cells": [CELL + [1]]}), 422, "has 41 values but 40"),
    "string value": (dumps({"genes": GENES, "cells": [row(c3="7")]}), 422, "'cells[0][3]' is '7'"),
    "null value": (dumps({"genes": GENES, "cells": [row(c5=None)]}), 422, "'cells[0][5]' is None"),
    "boolean value": (dumps({"genes": GENES, "cells": [row(c2=True)]}), 422, "'cells[0][2]' is True"),
    "hidden nested array": (dumps({"genes": GENES, "cells": [row(c4=[2])]}), 422, "'cells[0][4]' is a list"),
    "nested arrays": (dumps({"genes": GENES, "cells": [row(c4=[2, 3])]}), 422, "'cells[0][4]' is a list"),
    "negative counts": (dumps({"genes": GENES, "cells": [row(c7=-2)]}), 422, "negative values"),
    "non-integer counts": (dumps({"genes": GENES, "cells": [row(c1=2.5)]}), 422, "non-integer values"),
    "counts sent as lognorm": (
        dumps({"genes": GENES, "cells": [[float(i % 5 + 1) for i in range(40)]], "input": "lognorm"}),
        422,
        "looks like raw counts",
    ),
    "unknown input kind": (dumps({**predict_body([CELL]), "input": "tpm"}), 422, "'input' must be one of"),
    "duplicated genes": (
        dumps({"genes": ["G0", *GENES[:39]], "cells": [CELL]}),
        422,
        "appear more than once",
    ),
    "genes differing only by case": (
        dumps({"genes": [" G1", "g1", *(g for g in GENES if g != "G1")], "cells": [[1, *CELL]]}),
        422,
        "when case is ignored",
    ),
    "overlap below threshold": (
        dumps({"genes": [f"X{i}" for i in range(40)], "cells": [CELL]}),
        422,
        "were found in the input",
    ),
    "bad top_k": (dumps({**predict_body([CELL]), "top_k": 0}), 422, "'top_k' must be a positive integer"),
    "bad threshold": (dumps({**predict_body([CELL]), "threshold": 2}), 422, "'threshold' must be a number"),
    "bad return_probabilities": (
        dumps({**predict_body([CELL]), "return_probabilities": "yes"}),
        422,
        "true or false",
    ),
    "cell_ids of the wrong length": (
        dumps({**predict_body([CELL]), "cell_ids": ["a", "b"]}),
        422,
        "one per cell",
    ),
    "csr with a bad indptr": (
        dumps({"genes": GENES, "csr": {"indptr": [1, 2], "indices": [0], "data": [1]}}),
        422,
        "must start with 0",
    ),
    "csr with an index out of range": (
        dumps({"genes": GENES, "csr": {"indptr": [0, 1], "indices": [40], "data": [1]}}),
        422,
        "between 0 and 39",
    ),
    "csr with a repeated gene": (
        dumps({"genes": GENES, "csr": {"indptr": [0, 2], "indices": [3, 3], "data": [1, 2]}}),
        422,
        "same gene more than once",
    ),
    "csr parts that disagree": (
        dumps({"genes": GENES, "csr": {"indptr": [0, 2], "indices": [3], "data": [1, 2]}}),
        422,
        "all three must agree",
    ),
    "csr with unknown keys": (
        dumps({"genes": GENES, "csr": {"indptr": [0, 1], "indices": [3], "data": [1], "shape": [1, 40]}}),
        422,
        "unknown field(s) ['shape'] in 'csr'",
    ),
}


@pytest.mark.parametrize("case", list(JSON_CASES))
def test_bad_json_bodies_are_client_errors(client, case):
    body, status, fragment = JSON_CASES[case]
    response = client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
    assert_client_error(response, status, fragment)


def test_a_bracket_inside_a_gene_name_is_fine(client, predictor, counts):
    body = {"genes": ["[odd]", *GENES], "cells": np.hstack([np.ones((3, 1)), counts[:3]]).tolist()}
    response = client.post("/v1/predict", json={**body, "return_probabilities": True})
    assert response.status_code == 200, response.text
    probabilities = [
        [p["probabilities"][c] for c in predictor.classes] for p in response.json()["predictions"]
    ]
    np.testing.assert_allclose(probabilities, predictor.predict_proba(counts[:3], GENES), atol=1e-6)


def test_too_many_cells_is_413(make_client):
    client = make_client(max_cells_per_request=5)
    assert_client_error(client.post("/v1/predict", json=predict_body(random_counts(6))), 413, "at most 5")
    assert client.post("/v1/predict", json=predict_body(random_counts(5))).status_code == 200


def test_a_body_over_the_limit_is_413_before_it_is_read(make_client):
    client = make_client(max_body_bytes=4096)
    response = client.post("/v1/predict", json=predict_body(random_counts(200)))
    assert_client_error(response, 413, "larger than 4096 bytes")
    assert "x-request-id" in response.headers


def test_a_chunked_body_without_content_length_over_the_limit_is_413(make_client):
    client = make_client(max_body_bytes=4096)

    def chunks():
        for _ in range(100):
            yield b" " * 1024

    response = client.post("/v1/predict", content=chunks(), headers={"content-type": "application/json"})
    assert_client_error(response, 413, "larger than 4096 bytes")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_unsupported_content_types_are_415(client, content_type):
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/v1/predict", content=b"G0,G1\n1,2\n", headers=headers)
    assert_client_error(response, 415, "application/json")


def test_query_options_with_a_json_body_are_refused(client):
    response = client.post("/v1/predict?top_k=2", json=predict_body([CELL]))
    assert_client_error(response, 422, "go in the JSON body")


def test_invalid_query_options_are_422(client):
    response = client.post(
        "/v1/predict?top_k=zero", content=b"", headers={"content-type": "application/x-npz"}
    )
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", "top_k"]


def npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def zip_with(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


def npy_header_only(shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f8", "fortran_order": False, "shape": shape})
    return buffer.getvalue()


NPZ_CASES = {
    "not a zip": (b"garbage", 400, "not a readable npz"),
    "object array": (
        npz(genes=np.array(GENES), X=np.array([[object()]], dtype=object)),
        400,
        "Python objects",
    ),
    "not an npy member": (zip_with("notes.txt", b"hello"), 400, "not a .npy array"),
    "declares more data than it holds": (
        zip_with("X.npy", npy_header_only((10**6, 10**6))),
        400,
        "declares more data",
    ),
    "missing genes": (npz(X=random_counts(2)), 422, "must contain 'genes'"),
    "genes not strings": (npz(genes=np.arange(40), X=random_counts(2)), 422, "1-D array of strings"),
    "neither X nor CSR": (npz(genes=np.array(GENES)), 422, "either 'X'"),
    "X not 2-D": (npz(genes=np.array(GENES), X=np.ones(40)), 422, "must be 2-D"),
    "X of the wrong width": (npz(genes=np.array(GENES), X=np.ones((2, 39))), 422, "39 columns but 40 genes"),
    "X of strings": (npz(genes=np.array(GENES), X=np.full((1, 40), "a")), 422, "must hold numbers"),
    "X with NaN": (npz(genes=np.array(GENES), X=np.full((1, 40), np.nan)), 422, "NaN or infinite"),
    "incomplete CSR": (
        npz(genes=np.array(GENES), data=np.ones(1), indptr=np.array([0, 1])),
        422,
        "needs all of",
    ),
    "unknown array": (
        npz(genes=np.array(GENES), X=random_counts(1), extra=np.ones(1)),
        422,
        "unknown array(s) ['extra']",
    ),
}


@pytest.mark.parametrize("case", list(NPZ_CASES))
def test_bad_npz_bodies_are_client_errors(client, case):
    body, status, fragment = NPZ_CASES[case]
    response = client.post("/v1/predict", content=body, headers={"content-type": "application/x-npz"})
    assert_client_error(response, status, fragment)


def test_an_npz_that_expands_beyond_the_limit_is_413(make_client):
    client = make_client(max_expanded_bytes=100_000)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, genes=np.array(GENES), X=np.zeros((1000, 40)))
    assert len(buffer.getvalue()) < 100_000
    response = client.post(
        "/v1/predict", content=buffer.getvalue(), headers={"content-type": "application/x-npz"}
    )
    assert_client_error(response, 413, "expands to more than 100000 bytes")
