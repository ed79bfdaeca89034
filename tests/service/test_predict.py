"""POST /v1/predict: JSON rows, JSON CSR and npz bodies; parity with Predictor; per-cell invariance."""

from __future__ import annotations

import io

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from model.bundle import UNKNOWN_LABEL
from model.preprocessing import to_model_input

from .conftest import CLASSES, GENES, predict_body, random_counts


def probabilities_of(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([[p["probabilities"][c] for c in CLASSES] for p in response.json()["predictions"]])


def test_predictions_match_the_in_process_predictor(client, predictor, counts):
    response = client.post("/v1/predict", json=predict_body(counts, return_probabilities=True))
    annotation = predictor.annotate(counts, GENES)
    np.testing.assert_allclose(probabilities_of(response), annotation.probabilities, atol=1e-6)
    body = response.json()
    assert [p["label"] for p in body["predictions"]] == annotation.labels.tolist()
    np.testing.assert_allclose(
        [p["confidence"] for p in body["predictions"]], annotation.confidence, atol=1e-7
    )
    assert body["model"]["bundle_sha256"] == predictor.bundle.sha256
    assert body["gene_overlap"]["overlap"] == 1.0 and body["gene_overlap"]["n_matched"] == len(GENES)


def test_optional_fields_are_returned_only_when_asked(client, counts):
    plain = client.post("/v1/predict", json=predict_body(counts[:2])).json()["predictions"][0]
    assert set(plain) == {"label", "confidence", "unknown_reason"}
    ids = [f"cell-{i}" for i in range(3)]
    rich = client.post(
        "/v1/predict", json=predict_body(counts[:3], cell_ids=ids, top_k=2, return_probabilities=True)
    )
    predictions = rich.json()["predictions"]
    assert [p["cell_id"] for p in predictions] == ids
    for prediction in predictions:
        assert set(prediction["probabilities"]) == set(CLASSES)
        ranked = prediction["top_k"]
        assert len(ranked) == 2 and ranked[0]["probability"] >= ranked[1]["probability"]
        assert ranked[0]["probability"] == pytest.approx(max(prediction["probabilities"].values()))
        assert ranked[0]["probability"] == pytest.approx(prediction["confidence"])


def test_top_k_larger_than_the_number_of_types_returns_them_all(client, counts):
    prediction = client.post("/v1/predict", json=predict_body(counts[:1], top_k=50)).json()["predictions"][0]
    assert sorted(r["label"] for r in prediction["top_k"]) == sorted(CLASSES)


def test_cells_below_the_threshold_are_unknown(client, counts):
    confident = client.post("/v1/predict", json=predict_body(counts, threshold=0.0)).json()["predictions"]
    unsure = client.post("/v1/predict", json=predict_body(counts, threshold=1.0)).json()["predictions"]
    assert all(p["label"] in CLASSES for p in confident)
    assert all(p["label"] == UNKNOWN_LABEL for p in unsure)


def test_genes_in_any_order_with_extras_and_missing_ones_give_the_same_answer(client, predictor, counts, seed):
    order = np.random.default_rng(seed).permutation(len(GENES))
    extra = np.random.default_rng(seed + 1).poisson(5, size=(len(counts), 3)).astype(np.float32)
    genes = [GENES[i] for i in order] + ["EXTRA1", "EXTRA2", "EXTRA3"]
    cells = np.hstack([counts[:, order], extra])
    response = client.post("/v1/predict", json=predict_body(cells, genes, return_probabilities=True))
    np.testing.assert_allclose(probabilities_of(response), predictor.predict_proba(counts, GENES), atol=1e-6)
    assert response.json()["gene_overlap"]["n_ignored"] == 3
    partial = client.post("/v1/predict", json=predict_body(counts[:, :30], GENES[:30])).json()
    assert (
        partial["gene_overlap"]["n_missing"] == 10 and partial["gene_overlap"]["missing_examples"][0] == "G30"
    )


def test_lognorm_input_matches_counts(client, counts):
    lognorm = to_model_input(counts.copy(), "counts", 1e4)
    from_counts = client.post("/v1/predict", json=predict_body(counts, return_probabilities=True))
    from_lognorm = client.post(
        "/v1/predict", json=predict_body(lognorm, input="lognorm", return_probabilities=True)
    )
    np.testing.assert_allclose(probabilities_of(from_lognorm), probabilities_of(from_counts), atol=1e-5)


def test_sparse_csr_body_matches_dense_rows(client, counts):
    csr = sp.csr_matrix(counts)
    sparse_body = {
        "genes": GENES,
        "csr": {"indptr": csr.indptr.tolist(), "indices": csr.indices.tolist(), "data": csr.data.tolist()},
        "return_probabilities": True,
    }
    dense = client.post("/v1/predict", json=predict_body(counts, return_probabilities=True))
    np.testing.assert_array_equal(
        probabilities_of(client.post("/v1/predict", json=sparse_body)), probabilities_of(dense)
    )


def test_csr_rows_may_be_empty_and_indices_unsorted(client, predictor):
    body = {
        "genes": GENES,
        "csr": {"indptr": [0, 2, 2], "indices": [5, 1], "data": [3, 7]},
        "return_probabilities": True,
    }
    expected = np.zeros((2, len(GENES)), dtype=np.float32)
    expected[0, 5], expected[0, 1] = 3, 7
    np.testing.assert_allclose(
        probabilities_of(client.post("/v1/predict", json=body)),
        predictor.predict_proba(expected, GENES),
        atol=1e-6,
    )


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def test_npz_dense_and_csr_bodies_match_json(client, counts):
    expected = probabilities_of(
        client.post("/v1/predict", json=predict_body(counts, return_probabilities=True))
    )
    headers = {"content-type": "application/x-npz"}
    dense = npz_bytes(
        genes=np.array(GENES), X=counts, cell_ids=np.array([f"c{i}" for i in range(len(counts))])
    )
    response = client.post("/v1/predict?return_probabilities=true&top_k=2", content=dense, headers=headers)
    np.testing.assert_array_equal(probabilities_of(response), expected)
    assert (
        response.json()["predictions"][3]["cell_id"] == "c3"
        and len(response.json()["predictions"][0]["top_k"]) == 2
    )
    csr = sp.csr_matrix(counts)
    sparse = npz_bytes(
        genes=np.array(GENES, dtype="S"), data=csr.data, indices=csr.indices, indptr=csr.indptr
    )
    response = client.post("/v1/predict?return_probabilities=true", content=sparse, headers=headers)
    np.testing.assert_array_equal(probabilities_of(response), expected)


def test_a_cell_alone_equals_the_same_cell_inside_a_large_shuffled_batch(client, seed):
    batch = random_counts(1000, seed=seed)
    order = np.random.default_rng(seed + 1).permutation(len(batch))
    in_batch = probabilities_of(
        client.post("/v1/predict", json=predict_body(batch[order], return_probabilities=True))
    )
    unshuffled = np.empty_like(in_batch)
    unshuffled[order] = in_batch
    for index in (0, 17, 999):
        alone = probabilities_of(
            client.post("/v1/predict", json=predict_body(batch[index : index + 1], return_probabilities=True))
        )
        np.testing.assert_allclose(alone[0], unshuffled[index], atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(
    cells=st.integers(min_value=2, max_value=40).flatmap(
        lambda n: st.tuples(st.just(n), st.integers(0, n - 1), st.randoms(use_true_random=False))
    ),
    seed=st.integers(0, 2**16),
)
def test_invariance_property(client, cells, seed):
    n_cells, index, rng = cells
    batch = (
        np.random.default_rng(seed).negative_binomial(2, 0.3, size=(n_cells, len(GENES))).astype(np.float32)
    )
    order = list(range(n_cells))
    rng.shuffle(order)
    shuffled = probabilities_of(
        client.post("/v1/predict", json=predict_body(batch[order], return_probabilities=True))
    )
    alone = probabilities_of(
        client.post("/v1/predict", json=predict_body(batch[index : index + 1], return_probabilities=True))
    )
    np.testing.assert_allclose(alone[0], shuffled[order.index(index)], atol=1e-6)
