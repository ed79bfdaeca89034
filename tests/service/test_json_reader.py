"""The fast JSON readers agree exactly with a plain ``json.loads`` on every shape of document."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from service.decoding.json_rows import extract_rows
from service.decoding.predict import decode_predict_json
from service.errors import BodyTooLargeError

FORMATS = [
    {},
    {"separators": (",", ":")},
    {"indent": 2},
    {"indent": "\t", "separators": (" , ", " : ")},
]


def expected_matrix(body: bytes) -> np.ndarray:
    return np.asarray(json.loads(body)["cells"], dtype=np.float64).astype(np.float32)


@settings(max_examples=60, deadline=None)
@given(
    values=hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12),
        elements=st.one_of(
            st.integers(0, 10**6).map(float),
            st.floats(0, 30, allow_nan=False, width=32),
            st.floats(0, 1e20, allow_nan=False),
            st.floats(-1e-3, 1e-3, allow_nan=False, allow_subnormal=False),
        ),
    ),
    as_integers=st.booleans(),
    style=st.sampled_from(range(len(FORMATS))),
)
def test_compiled_reader_matches_json_loads(values, as_integers, style):
    cells = np.rint(np.clip(values, -1e15, 1e15)).astype(np.int64).tolist() if as_integers else values.tolist()
    genes = [f"g{i}" for i in range(values.shape[1])]
    body = json.dumps({"genes": genes, "cells": cells, "top_k": 1}, **FORMATS[style]).encode()
    decoded = decode_predict_json(body, max_cells=100)
    np.testing.assert_array_equal(decoded.matrix, expected_matrix(body))
    assert decoded.genes == genes and decoded.top_k == 1


def test_the_common_case_is_read_by_the_compiled_reader():
    body = b'{"genes": ["a", "b"], "cells": [[1, 2.5], [0, -3e-2]]}'
    start, end, values, lengths = extract_rows(body, ("cells",), 10)
    assert body[start:end] == b"[[1, 2.5], [0, -3e-2]]"
    np.testing.assert_array_equal(values, np.float32([1, 2.5, 0, -0.03]))
    assert lengths.tolist() == [2, 2]


@pytest.mark.parametrize(
    "cells",
    [
        b'[[1, "2"]]',
        b"[[1, null]]",
        b"[[1, [2]]]",
        b"[[01]]",
        b"[[1.]]",
        b"[[1e]]",
        b"[[1e400]]",
        b"[[" + b"9" * 30 + b"]]",
        b"[[1, 2],]",
        b"[[1 2]]",
        b"[1, 2]",
        b"[[NaN]]",
        b"[[1, 2]",
    ],
)
def test_anything_unusual_is_left_to_the_general_reader(cells):
    body = b'{"genes": ["a", "b"], "cells": ' + cells + b"}"
    assert extract_rows(body, ("cells",), 10) is None


def test_keys_inside_strings_and_nested_objects_are_not_taken_for_the_rows():
    body = b'{"genes": ["\\"cells\\": [[9]]"], "x": {"cells": [[8]]}, "cells": [[7]]}'
    start, end, values, _ = extract_rows(body, ("cells",), 10)
    assert body[start:end] == b"[[7]]" and values.tolist() == [7.0]


@pytest.mark.parametrize("n_rows", [6, 50])
def test_too_many_rows_are_refused_with_the_count(n_rows):
    body = json.dumps({"genes": ["a"], "cells": [[1]] * n_rows}).encode()
    with pytest.raises(BodyTooLargeError, match=f"{n_rows} cells but at most 5"):
        decode_predict_json(body, max_cells=5)


def test_duplicate_keys_are_read_like_json_loads_reads_them():
    body = b'{"genes": ["a"], "cells": [[1]], "cells": [[2]]}'
    assert decode_predict_json(body, max_cells=5).matrix.tolist() == json.loads(body)["cells"]
