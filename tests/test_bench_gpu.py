"""benchmarks/bench_gpu.py without a GPU: it refuses to measure, and its whole pipeline runs on the CPU at tiny sizes."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch

from benchmarks import bench_gpu


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_without_cuda_it_refuses_and_writes_nothing(capsys, monkeypatch, tmp_path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n")
    monkeypatch.setattr(bench_gpu, "DOC", doc)
    assert bench_gpu.main(["--write"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
    assert doc.read_text() == "# Benchmarks\n"


def test_tiled_file_repeats_the_block_cell_for_cell(tmp_path) -> None:
    block = bench_gpu.synthetic(tmp_path / "block.h5ad", 300)
    tiled = bench_gpu.tiled_h5ad(block, tmp_path / "tiled.h5ad", 700)
    small, big = ad.read_h5ad(block), ad.read_h5ad(tiled)
    assert big.shape == (700, small.n_vars) and big.obs_names.is_unique
    assert list(big.var_names) == list(small.var_names)
    expected = np.vstack([small.X.toarray()] * 3)[:700]
    np.testing.assert_array_equal(big.X.toarray(), expected)


@pytest.mark.slow
def test_every_item_is_measured_and_reported_on_the_cpu(tmp_path) -> None:
    plan = bench_gpu.Plan(
        norm_batches=(32,), norm_repeats=5, train_cells=1500, train_cells_cpu=1000, train_epochs=2,
        train_batches=(64,), score_cells=2500, score_block_cells=1000, serve_cells=(1, 100), serve_clients=(1,),
        serve_seconds=0.5,
    )  # fmt: skip
    text = bench_gpu.run(torch.device("cpu"), plan)
    sections = text.split("### ")
    assert [s.split("\n", 1)[0].split(" ")[0] for s in sections[1:]] == ["BatchRenorm1d", "Training", "Scoring", "Serving"]
    rows = {s.split("\n", 1)[0].split(" ")[0]: [line for line in s.splitlines() if line.startswith("| cpu")] for s in sections[1:]}
    assert len(rows["BatchRenorm1d"]) == 3  # float32, bfloat16 autocast, and the CPU baseline
    assert len(rows["Training"]) == 2 and len(rows["Scoring"]) == 2 and len(rows["Serving"]) == 4
    cells_per_s = [float(line.split("|")[column].replace(",", "")) for name, column in (("Training", 5), ("Scoring", 4))
                   for line in rows[name]]
    assert all(rate > 0 for rate in cells_per_s)
    assert all(line.split("|")[5].strip() == "0" for line in rows["Serving"])  # no failed request
