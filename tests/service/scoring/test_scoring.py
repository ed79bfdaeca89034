"""Tests for batch scoring (service.scoring): equality with Predictor, chunking, resume, outputs, errors."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import service.scoring.inputs as scoring_inputs
from model.bundle import UNKNOWN_LABEL
from model.errors import GeneMismatchError, InputError, InputKindError
from model.h5ad import H5adRows
from model.novelty import UNKNOWN_REASONS
from model.predict import Predictor
from service.scoring import blocks, executors
from service.scoring_io import ScoringError
from tests.factories import CLASSES

from .files import MODEL_GENES, N_CELLS, make_bundle_dir, make_counts, score, write_h5ad


def reference(bundle_dir: Path, path: Path, input_kind: str = "counts", layer: str | None = None):
    """Predictor.annotate over the whole file, loaded in memory."""
    adata = ad.read_h5ad(path)
    matrix = adata.X if layer is None else adata.layers[layer]
    predictor = Predictor.load(bundle_dir, device="cpu")
    return predictor.annotate(matrix, list(adata.var_names), input_kind=input_kind), list(adata.obs_names)


def test_predictions_equal_the_in_process_predictor(bundle_dir, counts_file, tmp_path):
    out = tmp_path / "scores.parquet"
    summary = score(counts_file, bundle_dir, out, chunk_size=50, top_k=2)
    table = pd.read_parquet(out)
    annotation, cell_ids = reference(bundle_dir, counts_file)
    assert table["cell_id"].tolist() == cell_ids
    assert set(table["source_file"]) == {str(counts_file)}
    np.testing.assert_array_equal(table["predicted_cell_type"].to_numpy(), annotation.labels.astype(str))
    np.testing.assert_array_equal(table["confidence"].to_numpy(), annotation.confidence)
    order = np.argsort(-annotation.probabilities, axis=1, kind="stable")
    np.testing.assert_array_equal(table["top1_label"].to_numpy(), np.asarray(CLASSES)[order[:, 0]])
    np.testing.assert_array_equal(table["top2_label"].to_numpy(), np.asarray(CLASSES)[order[:, 1]])
    np.testing.assert_array_equal(
        table["top2_prob"].to_numpy(), annotation.probabilities[np.arange(N_CELLS), order[:, 1]]
    )
    assert summary.n_cells == summary.n_scored == N_CELLS
    assert sum(summary.label_counts.values()) == N_CELLS
    assert summary.label_counts.get(UNKNOWN_LABEL, 0) == int((annotation.labels == UNKNOWN_LABEL).sum())
    assert summary.inputs[0]["input_kind"] == "counts" and summary.inputs[0]["detected"]
    assert summary.inputs[0]["genes_matched"] == 50


@pytest.mark.parametrize("chunk_size", [1, 7, N_CELLS - 1, N_CELLS, N_CELLS + 1])
def test_results_do_not_depend_on_the_chunk_size(bundle_dir, counts_file, tmp_path, chunk_size):
    baseline = tmp_path / "baseline.parquet"
    score(counts_file, bundle_dir, baseline)
    out = tmp_path / f"chunks{chunk_size}.parquet"
    score(counts_file, bundle_dir, out, chunk_size=chunk_size)
    pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(baseline), check_exact=True)


@pytest.mark.parametrize("threads", [1, 3])
def test_blocks_and_threads_do_not_change_results(bundle_dir, counts_file, tmp_path, monkeypatch, threads):
    baseline = tmp_path / "baseline.csv"
    score(counts_file, bundle_dir, baseline)
    monkeypatch.setattr(blocks, "BLOCK_ROWS", 13)
    monkeypatch.setattr(executors, "usable_cores", lambda: threads)
    out = tmp_path / "small_blocks.csv"
    score(counts_file, bundle_dir, out)
    pd.testing.assert_frame_equal(pd.read_csv(out), pd.read_csv(baseline), check_exact=True)


def test_h5ad_output_keeps_the_file_and_adds_obs_columns(bundle_dir, counts_file, tmp_path):
    out = tmp_path / "annotated.h5ad"
    score(counts_file, bundle_dir, out, chunk_size=40)
    with h5py.File(counts_file) as before, h5py.File(out) as after:
        for name in ("X/data", "X/indices", "X/indptr", "var/_index", "obs/_index"):
            np.testing.assert_array_equal(after[name][()], before[name][()])
        assert dict(after["X"].attrs).keys() == dict(before["X"].attrs).keys()
    annotated = ad.read_h5ad(out)
    annotation, _ = reference(bundle_dir, counts_file)
    assert (annotated.X != ad.read_h5ad(counts_file).X).nnz == 0
    assert list(annotated.obs.columns) == [
        "cell_type",
        "batch",
        "predicted_cell_type",
        "confidence",
        "unknown_reason",
        "top1_label",
        "top1_prob",
        "top2_label",
        "top2_prob",
        "top3_label",
        "top3_prob",
    ]
    assert annotated.obs["batch"].tolist() == ad.read_h5ad(counts_file).obs["batch"].tolist()
    assert list(annotated.obs["predicted_cell_type"].cat.categories) == CLASSES + [UNKNOWN_LABEL]
    np.testing.assert_array_equal(
        annotated.obs["predicted_cell_type"].astype(str), annotation.labels.astype(str)
    )
    np.testing.assert_array_equal(annotated.obs["confidence"].to_numpy(), annotation.confidence)
    assert annotated.obs["confidence"].dtype == np.float32
    assert list(annotated.obs["unknown_reason"].cat.categories) == list(UNKNOWN_REASONS)
    np.testing.assert_array_equal(annotated.obs["unknown_reason"].astype(str), annotation.unknown_reason.astype(str))
    best = np.asarray(CLASSES)[annotation.probabilities.argmax(axis=1)]
    np.testing.assert_array_equal(annotated.obs["top1_label"].astype(str), best)
    np.testing.assert_array_equal(annotated.obs["top1_prob"].to_numpy(), annotation.confidence)

    rescored = tmp_path / "rescored.h5ad"
    score(out, bundle_dir, rescored, top_k=0)
    columns = list(ad.read_h5ad(rescored).obs.columns)
    assert columns.count("predicted_cell_type") == 1 and columns[-3:] == [
        "predicted_cell_type", "confidence", "unknown_reason"
    ]


def test_csv_output_and_per_class_columns(bundle_dir, counts_file, tmp_path):
    out = tmp_path / "scores.csv"
    score(counts_file, bundle_dir, out, top_k=len(CLASSES))
    table = pd.read_csv(out)
    assert list(table.columns) == ["cell_id", "source_file", "predicted_cell_type", "confidence", "unknown_reason"] + [
        f"probability:{c}" for c in CLASSES
    ]
    annotation, _ = reference(bundle_dir, counts_file)
    np.testing.assert_allclose(
        table[[f"probability:{c}" for c in CLASSES]].to_numpy(), annotation.probabilities, rtol=1e-6
    )
    np.testing.assert_allclose(table[[f"probability:{c}" for c in CLASSES]].sum(axis=1), 1.0, rtol=1e-5)


def test_per_class_columns_in_h5ad_with_awkward_class_names(counts_file, tmp_path):
    bundle_dir = make_bundle_dir(tmp_path / "bundle", classes=["B/plasma", "T_label", "NK"])
    out = tmp_path / "out.h5ad"
    score(counts_file, bundle_dir, out, top_k=5)
    obs = ad.read_h5ad(out).obs
    columns = ["probability:B_plasma", "probability:T_label", "probability:NK"]
    assert list(obs.columns) == ["cell_type", "batch", "predicted_cell_type", "confidence", "unknown_reason"] + columns
    assert all(obs[c].dtype == np.float32 for c in columns)
    np.testing.assert_allclose(obs[columns].sum(axis=1), 1.0, rtol=1e-5)
    assert set(obs["predicted_cell_type"].cat.categories) == {"B/plasma", "T_label", "NK", UNKNOWN_LABEL}


def test_several_inputs_make_one_table(bundle_dir, counts_file, tmp_path, seed):
    X, genes = make_counts(n_cells=30, seed=seed + 1)
    second = write_h5ad(tmp_path / "second.h5ad", X, genes)
    out = tmp_path / "both.parquet"
    summary = score([counts_file, second], bundle_dir, out, chunk_size=25)
    table = pd.read_parquet(out)
    assert summary.n_cells == len(table) == N_CELLS + 30
    assert table["source_file"].tolist() == [str(counts_file)] * N_CELLS + [str(second)] * 30
    single = tmp_path / "second.parquet"
    score(second, bundle_dir, single)
    pd.testing.assert_frame_equal(
        table.iloc[N_CELLS:].reset_index(drop=True), pd.read_parquet(single), check_exact=True
    )
    with pytest.raises(ScoringError, match="exactly one input"):
        score([counts_file, second], bundle_dir, tmp_path / "both.h5ad")


def test_dense_matrix_lognorm_layer_and_declared_kind(bundle_dir, tmp_path, seed):
    X, genes = make_counts(n_cells=40, seed=seed)
    totals = np.asarray(X.sum(axis=1)).ravel()
    lognorm = np.log1p(X.toarray() / np.maximum(totals, 1)[:, None] * 1e4).astype(np.float32)
    path = write_h5ad(tmp_path / "dense.h5ad", X.toarray(), genes, lognorm=lognorm)
    expected, _ = reference(bundle_dir, path)
    dense_out = tmp_path / "dense.csv"
    score(path, bundle_dir, dense_out, chunk_size=15, input_kind="counts")
    np.testing.assert_array_equal(pd.read_csv(dense_out)["predicted_cell_type"], expected.labels.astype(str))
    layer_out = tmp_path / "layer.parquet"
    summary = score(path, bundle_dir, layer_out, layer="lognorm")
    assert summary.inputs[0]["input_kind"] == "lognorm"
    from_layer, _ = reference(bundle_dir, path, input_kind="lognorm", layer="lognorm")
    np.testing.assert_array_equal(pd.read_parquet(layer_out)["confidence"].to_numpy(), from_layer.confidence)
    with pytest.raises(InputError, match="no layer 'missing'.*lognorm"):
        score(path, bundle_dir, tmp_path / "x.csv", layer="missing")


def test_gene_mismatch_is_refused_before_any_work(bundle_dir, tmp_path):
    X, _ = make_counts(n_cells=10)
    path = write_h5ad(tmp_path / "symbols.h5ad", X, [f"OTHER{i}" for i in range(X.shape[1])])
    out = tmp_path / "out.csv"
    with pytest.raises(GeneMismatchError, match=r"symbols\.h5ad: only 0 of the model's 60 genes"):
        score(path, bundle_dir, out)
    assert not out.exists() and not list(tmp_path.glob(".*partial"))


def test_wrong_input_kind_is_refused_with_the_service_message(bundle_dir, counts_file, tmp_path):
    with pytest.raises(
        InputKindError, match=r"counts\.h5ad: input declared as log-normalized holds only whole"
    ):
        score(counts_file, bundle_dir, tmp_path / "out.csv", input_kind="lognorm")
    X, genes = make_counts(n_cells=20)
    X.data[5] = -1.0
    negative = write_h5ad(tmp_path / "negative.h5ad", X, genes)
    with pytest.raises(InputKindError, match=r"negative\.h5ad: input contains negative values"):
        score(negative, bundle_dir, tmp_path / "out.csv")


def test_bad_value_deep_in_the_file_names_the_cell(bundle_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(scoring_inputs, "SAMPLE_CELLS", 10)
    X, genes = make_counts(n_cells=60)
    row = 47
    X.data[X.indptr[row] + 1] = 2.5
    path = write_h5ad(tmp_path / "late.h5ad", X, genes)
    out = tmp_path / "out.parquet"
    with pytest.raises(
        InputKindError, match=rf"late\.h5ad: .*non-integer values \(e\.g\. 2\.5 at cell {row}, .*'cell{row}'"
    ):
        score(path, bundle_dir, out, chunk_size=20)
    assert not out.exists() and not (tmp_path / ".out.parquet.partial").exists()
    X.data[X.indptr[row] + 1] = np.nan
    dense = write_h5ad(tmp_path / "late_dense.h5ad", X.toarray(), genes)
    with pytest.raises(InputKindError, match=rf"NaN or infinite.*at cell {row},.*'cell{row}'"):
        score(dense, bundle_dir, out, chunk_size=20)


def test_log_normalized_block_of_whole_numbers_is_refused(bundle_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(scoring_inputs, "SAMPLE_CELLS", 10)
    monkeypatch.setattr(blocks, "BLOCK_ROWS", 10)
    X, genes = make_counts(n_cells=40)
    X.data = np.minimum(X.data, 20.0)
    X.data[: X.indptr[30]] += 0.5  # the first 30 cells look log-normalized, the last 10 hold counts
    path = write_h5ad(tmp_path / "mixed.h5ad", X, genes)
    with pytest.raises(
        InputKindError, match=r"mixed\.h5ad: cells 30\.\.39: input declared as log-normalized"
    ):
        score(path, bundle_dir, tmp_path / "out.csv", input_kind="lognorm")


def test_counts_within_tolerance_of_whole_numbers_are_accepted(bundle_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(scoring_inputs, "SAMPLE_CELLS", 5)
    X, genes = make_counts(n_cells=30)
    X.data[-1] += 2e-5
    path = write_h5ad(tmp_path / "almost.h5ad", X, genes)
    summary = score(path, bundle_dir, tmp_path / "out.csv")
    assert summary.n_cells == 30


def test_column_major_matrix_is_refused_with_a_fix(bundle_dir, tmp_path):
    X, genes = make_counts(n_cells=10)
    path = write_h5ad(tmp_path / "csc.h5ad", X.tocsc(), genes)
    with pytest.raises(InputError, match=r"CSC.*tocsr\(\)"):
        score(path, bundle_dir, tmp_path / "out.csv")


@pytest.mark.parametrize(
    ("make_out", "message"),
    [
        (lambda d: d / "out.txt", "unsupported output suffix '.txt'"),
        (lambda d: d / "missing" / "out.csv", "does not exist"),
        (lambda d: Path("/proc/out.csv"), "cannot"),
    ],
)
def test_bad_output_paths(bundle_dir, counts_file, tmp_path, make_out, message):
    with pytest.raises(ScoringError, match=message):
        score(counts_file, bundle_dir, make_out(tmp_path))


def test_missing_and_unreadable_inputs(bundle_dir, tmp_path):
    with pytest.raises(InputError, match="nope.h5ad: no such file"):
        score(tmp_path / "nope.h5ad", bundle_dir, tmp_path / "out.csv")
    garbage = tmp_path / "garbage.h5ad"
    garbage.write_bytes(b"not an hdf5 file")
    with pytest.raises(InputError, match="cannot be read as an .h5ad"):
        score(garbage, bundle_dir, tmp_path / "out.csv")


class Crash(RuntimeError):
    """Stands in for the process dying."""


def crash_after(monkeypatch, n_chunks: int, check=None) -> None:
    """Make scoring raise :class:`Crash` when chunk ``n_chunks + 1`` starts."""
    real = executors.score_chunk
    calls = []

    def flaky(*args, **kwargs):
        if check is not None:
            check()
        if len(calls) == n_chunks:
            raise Crash("simulated crash")
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(executors, "score_chunk", flaky)


def test_resume_after_a_crash_gives_the_uninterrupted_output(bundle_dir, counts_file, tmp_path, monkeypatch):
    expected = tmp_path / "expected.h5ad"
    score(counts_file, bundle_dir, expected, chunk_size=25)
    out = tmp_path / "out.h5ad"
    out.write_bytes(b"an older output")

    crash_after(
        monkeypatch, 3, check=lambda: out.read_bytes() == b"an older output" or pytest.fail("touched")
    )
    with pytest.raises(Crash):
        score(counts_file, bundle_dir, out, chunk_size=25)
    monkeypatch.undo()
    assert out.read_bytes() == b"an older output"  # nothing complete-looking replaced it
    partial = tmp_path / ".out.h5ad.partial"
    assert sorted(p.name for p in partial.iterdir()) == [
        "chunk-0000-0000000.npz",
        "chunk-0000-0000001.npz",
        "chunk-0000-0000002.npz",
        "lock",
        "state.json",
    ]

    with pytest.raises(ScoringError, match="--resume"):
        score(counts_file, bundle_dir, out, chunk_size=25)
    with pytest.raises(ScoringError, match="cannot resume.*chunk_size: was 25, now 30"):
        score(counts_file, bundle_dir, out, chunk_size=30, resume=True)
    summary = score(counts_file, bundle_dir, out, chunk_size=25, resume=True)
    assert summary.n_scored == N_CELLS - 75 and summary.n_cells == N_CELLS
    assert not partial.exists()
    pd.testing.assert_frame_equal(ad.read_h5ad(out).obs, ad.read_h5ad(expected).obs, check_exact=True)


def test_resume_refuses_a_changed_input_or_model(bundle_dir, tmp_path, monkeypatch, seed):
    X, genes = make_counts(n_cells=50)
    path = write_h5ad(tmp_path / "in.h5ad", X, genes)
    out = tmp_path / "out.csv"
    crash_after(monkeypatch, 1)
    with pytest.raises(Crash):
        score(path, bundle_dir, out, chunk_size=20)
    monkeypatch.undo()
    other_model = make_bundle_dir(tmp_path / "other", seed=seed + 1)
    with pytest.raises(ScoringError, match="cannot resume.*model_sha256"):
        score(path, other_model, out, chunk_size=20, resume=True)
    write_h5ad(path, X[::-1], genes)
    with pytest.raises(ScoringError, match="cannot resume.*inputs"):
        score(path, bundle_dir, out, chunk_size=20, resume=True)


def test_two_runs_never_write_the_same_output_at_once(bundle_dir, counts_file, tmp_path):
    import fcntl

    out = tmp_path / "out.csv"
    partial = tmp_path / ".out.csv.partial"
    partial.mkdir()
    with open(partial / "lock", "a") as held:  # what a running `celltype score` holds
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(ScoringError, match=f"another celltype score run is writing {out} right now"):
            score(counts_file, bundle_dir, out, resume=True)
    assert partial.is_dir() and not out.exists()


def test_resume_without_earlier_run_starts_fresh(bundle_dir, counts_file, tmp_path):
    summary = score(counts_file, bundle_dir, tmp_path / "out.csv", resume=True)
    assert summary.n_scored == N_CELLS


def test_empty_input_gives_an_empty_table(bundle_dir, tmp_path):
    path = write_h5ad(tmp_path / "empty.h5ad", sp.csr_matrix((0, 3), dtype=np.float32), ["G1", "G2", "G3"])
    with pytest.raises(GeneMismatchError):
        score(path, bundle_dir, tmp_path / "out.csv")
    path = write_h5ad(tmp_path / "empty.h5ad", sp.csr_matrix((0, 60), dtype=np.float32), MODEL_GENES)
    for suffix in (".csv", ".parquet", ".h5ad"):
        out = tmp_path / f"out{suffix}"
        assert score(path, bundle_dir, out).n_cells == 0
        assert out.exists()
    assert pd.read_parquet(tmp_path / "out.parquet").columns[:3].tolist() == [
        "cell_id",
        "source_file",
        "predicted_cell_type",
    ]


def test_reader_reads_row_ranges_without_loading_the_matrix(counts_file):
    X, _ = make_counts()
    with H5adRows(counts_file) as reader:
        assert (reader.n_cells, reader.n_genes, reader.is_sparse) == (N_CELLS, X.shape[1], True)
        block = reader.read(17, 61)
        assert (block.csr() != X[17:61]).nnz == 0
        assert reader.cell_ids(17, 19).tolist() == ["cell17", "cell18"]


def test_scores_equal_the_rest_service(bundle_dir, counts_file, tmp_path):
    import io

    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    out = tmp_path / "scores.csv"
    score(counts_file, bundle_dir, out, top_k=len(CLASSES))
    with TestClient(create_app(Settings(model_uri=str(bundle_dir), device="cpu"))) as client:
        response = client.post(
            "/v1/predict/h5ad",
            params={"format": "csv", "return_probabilities": "true"},
            files={"file": ("counts.h5ad", counts_file.read_bytes(), "application/x-hdf5")},
        )
    assert response.status_code == 200, response.text
    served = pd.read_csv(io.StringIO(response.text))
    batch = pd.read_csv(out)
    assert batch["cell_id"].tolist() == served["cell_id"].tolist()
    assert batch["predicted_cell_type"].tolist() == served["predicted_cell_type"].tolist()
    for column in ["confidence"] + [f"probability:{c}" for c in CLASSES]:  # both print float32 values
        np.testing.assert_array_equal(batch[column].astype(np.float32), served[column].astype(np.float32))


def test_ordered_map_keeps_order_and_raises_the_first_error():
    import time as clock

    def slow_square(x: int) -> int:
        clock.sleep(0.002 * (x % 3))
        if x == 40:
            raise ValueError("bad item 40")
        return x * x

    assert list(blocks.ordered_map(slow_square, range(40), 3)) == [x * x for x in range(40)]
    results = blocks.ordered_map(slow_square, range(100), 3)
    assert [next(results) for _ in range(40)] == [x * x for x in range(40)]
    with pytest.raises(ValueError, match="bad item 40"):
        next(results)
