"""Batch scoring on Dask: a local cluster of 2 single-threaded worker processes gives the local results."""

from __future__ import annotations

import logging
import socket

import anndata as ad
import pandas as pd
import pytest
from distributed import Client, LocalCluster

import service.scoring.inputs as scoring_inputs
from model.errors import InputKindError
from service.scoring import executors
from service.scoring_io import ScoringError

from .files import make_counts, score, write_h5ad


def cached_predictor_ids() -> list[int]:
    """Run on a worker: identities of the models it has loaded."""
    from service.scoring import executors

    return [id(predictor) for predictor in executors._WORKER_PREDICTORS.values()]


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=logging.ERROR
    ) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def counts_file(tmp_path_factory):
    X, genes = make_counts(n_cells=150, seed=11)
    return write_h5ad(tmp_path_factory.mktemp("data") / "counts.h5ad", X, genes)


def test_dask_results_equal_the_single_process_run(cluster, bundle_dir, counts_file, tmp_path):
    local = tmp_path / "local.parquet"
    score(counts_file, bundle_dir, local, chunk_size=16)
    on_dask = tmp_path / "dask.parquet"
    summary = score(counts_file, bundle_dir, on_dask, chunk_size=16, scheduler=cluster.scheduler_address)
    assert summary.n_scored == 150
    pd.testing.assert_frame_equal(pd.read_parquet(on_dask), pd.read_parquet(local), check_exact=True)

    with Client(cluster) as client:
        loaded = client.run(cached_predictor_ids)
    assert len(loaded) == 2 and all(len(ids) <= 1 for ids in loaded.values())
    assert sum(len(ids) for ids in loaded.values()) >= 1

    annotated = tmp_path / "dask.h5ad"
    score(counts_file, bundle_dir, annotated, chunk_size=32, top_k=0, scheduler=cluster.scheduler_address)
    with Client(cluster) as client:
        assert client.run(cached_predictor_ids) == loaded  # the same model objects served the second run
    obs = ad.read_h5ad(annotated).obs
    table = pd.read_parquet(local)
    assert obs["predicted_cell_type"].astype(str).tolist() == table["predicted_cell_type"].tolist()
    assert obs["confidence"].tolist() == table["confidence"].tolist()


def test_a_bad_value_found_on_a_worker_names_the_cell(cluster, bundle_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(scoring_inputs, "SAMPLE_CELLS", 10)
    X, genes = make_counts(n_cells=80, seed=2)
    X.data[X.indptr[66]] = -3.0
    path = write_h5ad(tmp_path / "bad.h5ad", X, genes)
    out = tmp_path / "out.csv"
    with pytest.raises(
        InputKindError, match=r"bad\.h5ad: input contains negative values .*cell 66.*'cell66'"
    ):
        score(path, bundle_dir, out, chunk_size=20, scheduler=cluster.scheduler_address)
    assert not out.exists() and not (tmp_path / ".out.csv.partial").exists()


def test_unreachable_scheduler_is_a_clear_error(bundle_dir, counts_file, tmp_path, monkeypatch):
    monkeypatch.setattr(executors, "SCHEDULER_TIMEOUT_S", 1.0)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "out.csv"
    with pytest.raises(ScoringError, match=f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}"):
        score(counts_file, bundle_dir, out, scheduler=f"tcp://127.0.0.1:{port}")
    assert not out.exists() and not (tmp_path / ".out.csv.partial").exists()


@pytest.mark.slow
def test_workers_option_starts_a_local_cluster(bundle_dir, counts_file, tmp_path):
    local = tmp_path / "local.csv"
    score(counts_file, bundle_dir, local, chunk_size=40)
    on_dask = tmp_path / "dask.csv"
    score(counts_file, bundle_dir, on_dask, chunk_size=40, workers=2)
    pd.testing.assert_frame_equal(pd.read_csv(on_dask), pd.read_csv(local), check_exact=True)
