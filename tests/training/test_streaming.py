"""Training from disk (training.streaming): same weights as in memory, many files, the data-mode choice."""

from __future__ import annotations

from pathlib import Path

import anndata
import numpy as np
import pytest
import torch

from training import streaming, trainer
from training.config import TrainConfig
from training.data import load_labeled
from training.genes import select_genes
from training.pipeline import TrainingRun, train_model
from training.samplers import make_sampler
from training.streaming import (
    DiskLabeledData,
    PrefetchingSampler,
    choose_data_mode,
    open_labeled,
    streaming_setup,
)
from training.synthetic import make_multilab


def _config(**changes: object) -> TrainConfig:
    base = dict(
        epochs=2, n_top_genes=60, hidden_sizes=(32, 16), batch_size=32, device="cpu", sampler_block_rows=40,
        holdout_batches=("lab_2",),
    )
    return TrainConfig.from_dict(base | changes)


def _train(config: TrainConfig, data: object) -> tuple[dict[str, torch.Tensor], TrainingRun]:
    run = train_model(config, data, configure_trainer=streaming_setup(data, config.sampler_block_rows))
    return run.bundle.state_dict, run


@pytest.fixture
def streamed(monkeypatch: pytest.MonkeyPatch) -> None:
    """No dense input cache and small windows: every mini-batch comes from prefetched windows."""
    monkeypatch.setattr(trainer, "INPUT_CACHE_BYTES", 0)
    monkeypatch.setattr(streaming, "WINDOW_BLOCKS", 2)
    monkeypatch.setattr(streaming, "READ_ROWS", 50)


@pytest.mark.parametrize(
    "changes",
    [{}, {"sampler": "shuffled"}, {"sampler": "class_balanced", "sampler_block_rows": 0}],
    ids=["lab_homogeneous_blocks", "shuffled_blocks", "class_balanced_rows"],
)
def test_disk_training_gives_the_weights_of_memory_training(
    multilab_h5ad: Path, streamed: None, changes: dict[str, object]
) -> None:
    config = _config(**changes)
    memory_data, _ = load_labeled(multilab_h5ad)
    disk_data, _ = open_labeled(multilab_h5ad)
    try:
        memory_weights, memory_run = _train(config, memory_data)
        disk_weights, disk_run = _train(config, disk_data)
    finally:
        disk_data.close()
    assert disk_run.bundle.genes == memory_run.bundle.genes
    assert memory_weights.keys() == disk_weights.keys()
    for name, value in memory_weights.items():
        assert torch.equal(value, disk_weights[name]), name
    assert disk_run.metrics["holdout"]["overall"] == memory_run.metrics["holdout"]["overall"]
    assert disk_run.metrics["validation"] == memory_run.metrics["validation"]


def test_gene_selection_streamed_equals_in_memory(multilab_h5ad: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("training.genes.STATS_ROWS", 64)
    memory_data, _ = load_labeled(multilab_h5ad)
    disk_data, _ = open_labeled(multilab_h5ad)
    rows = np.flatnonzero(memory_data.batches != "lab_1")
    assert select_genes(disk_data.subset(rows), 50) == select_genes(memory_data.subset(rows), 50)
    disk_data.close()


def test_disk_rows_equal_memory_rows_in_any_order(multilab_h5ad: Path) -> None:
    memory_data, _ = load_labeled(multilab_h5ad)
    disk_data, _ = open_labeled(multilab_h5ad)
    genes = memory_data.genes[::3]
    memory_view, disk_view = memory_data.select_genes(genes), disk_data.select_genes(genes)
    rows = np.random.default_rng(0).choice(memory_data.n_cells, 200, replace=True)
    np.testing.assert_array_equal(disk_view.model_input(rows), memory_view.model_input(rows))
    disk_data.close()


@pytest.mark.parametrize(
    ("name", "options"),
    [("shuffled", {"block_rows": 20, "window_blocks": 2}), ("class_balanced", {})],
    ids=["block_windows", "grouped_windows"],
)
def test_prefetching_sampler_makes_every_batch_input_ready(
    multilab_h5ad: Path, streamed: None, name: str, options: dict[str, int]
) -> None:
    disk_data, _ = open_labeled(multilab_h5ad)
    view = disk_data.select_genes(disk_data.genes[::2])
    train_rows = np.arange(0, view.n_cells, 2)
    inner = make_sampler(name, view.labels[train_rows], view.batches[train_rows], 16, **options)
    sampler = PrefetchingSampler(inner, view, train_rows, window_rows=50, prefetch_bytes=1)
    epoch = sampler.batches(0)
    seen = []
    for batch in epoch:
        rows = train_rows[batch]
        ready = view._ready
        assert ready is not None and np.array_equal(ready[0], rows)  # made ready by the background thread
        served = view.model_input(rows)
        assert served is ready[1] and view._ready is None
        np.testing.assert_array_equal(served, view.model_input(rows))  # equal to a fresh read
        seen.append(batch)
    assert len(seen) == len(epoch) == len(inner)
    if name == "shuffled":
        assert sorted(np.concatenate(seen).tolist()) == list(range(len(train_rows)))
    assert view._ready is None
    disk_data.close()


def test_prefetching_sampler_stops_its_reader_early_and_raises_its_errors(
    multilab_h5ad: Path, streamed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk_data, _ = open_labeled(multilab_h5ad)
    train_rows = np.arange(disk_data.n_cells)
    inner = make_sampler("shuffled", disk_data.labels, disk_data.batches, 8, block_rows=10, window_blocks=1)
    sampler = PrefetchingSampler(inner, disk_data, train_rows, prefetch_bytes=1)
    for index, _ in enumerate(sampler.batches(0)):
        if index == 2:
            break  # the trainer stops mid-epoch (max_steps)
    assert disk_data._ready is None

    def broken(rows: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(disk_data, "read_rows", broken)
    with pytest.raises(OSError, match="disk gone"):
        list(sampler.batches(1))
    disk_data.close()


def test_fifty_files_of_one_lab_each_train_and_report_the_gene_intersection(tmp_path: Path) -> None:
    adata = make_multilab(n_cells=50 * 24, n_genes=80, n_types=3, n_labs=50, seed=3)
    rng = np.random.default_rng(0)
    paths, shared = [], set(adata.var_names)
    for lab in sorted(adata.obs["batch"].unique()):
        part = adata[adata.obs["batch"] == lab].copy()
        keep = np.sort(rng.choice(part.n_vars, part.n_vars - 2, replace=False))
        part = part[:, keep].copy()
        shared &= set(part.var_names)
        del part.obs["batch"]
        path = tmp_path / f"{lab}.h5ad"
        anndata.AnnData(part.X, obs=part.obs, var=part.var).write_h5ad(path)
        paths.append(path)
    data, report = open_labeled(paths)
    assert len(data.sources) == 50
    assert set(data.genes) == shared and report.n_genes == len(shared)
    assert f"gene intersection: {len(shared):,} genes shared by all 50 files" in report.lines()
    run = train_model(
        _config(epochs=1, n_top_genes=30, holdout_batches=(paths[0].stem,), sampler_block_rows=0),
        data, configure_trainer=streaming_setup(data, 0),
    )
    data.close()
    assert run.metrics["holdout"]["overall"]["n_cells"] == int((data.batches == paths[0].stem).sum()) > 0
    assert 0 < len(run.bundle.genes) <= 30  # fewer when fewer genes are detected in every lab


def test_data_mode_choice_and_its_log_line(multilab_h5ad: Path) -> None:
    small = choose_data_mode(multilab_h5ad, "auto", available_bytes=64 * 2**30)
    assert small.mode == "memory" and small.n_cells == 600 and small.n_genes == 120
    tight = choose_data_mode(multilab_h5ad, "auto", available_bytes=2**20)
    assert tight.mode == "disk"
    assert tight.message().startswith("training from disk: 600 cells x 120 genes need ")
    assert "0.0 GiB available (data_mode=auto, chosen from the sizes)" in tight.message()
    assert choose_data_mode(multilab_h5ad, "disk", available_bytes=64 * 2**30).mode == "disk"
    assert choose_data_mode(multilab_h5ad, "memory", available_bytes=1).mode == "memory"
    with pytest.raises(ValueError, match="data_mode must be one of"):
        choose_data_mode(multilab_h5ad, "gpu")


def test_disk_data_refuses_unknown_genes(multilab_h5ad: Path) -> None:
    disk_data, _ = open_labeled(multilab_h5ad)
    with pytest.raises(Exception, match="not in the data"):
        disk_data.select_genes(["no_such_gene"])
    assert isinstance(disk_data.subset(np.arange(3)), DiskLabeledData)
    disk_data.close()


def test_a_distributed_rank_trains_from_disk_like_one_process(
    multilab_h5ad: Path, streamed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    import torch.distributed as dist

    from training.distributed import DataParallel, rank_setup

    config = _config()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    disk_data, _ = open_labeled(multilab_h5ad)
    samplers = []
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        setup = rank_setup(disk_data, config, DataParallel("local"))

        def configure(trainer: object) -> None:
            setup(trainer)
            samplers.append(trainer.sampler)  # type: ignore[attr-defined]

        ranked = train_model(config, disk_data, rank=0, world_size=1, configure_trainer=configure)
    finally:
        dist.destroy_process_group()
    single_weights, _ = _train(config, disk_data)
    disk_data.close()
    assert isinstance(samplers[0], PrefetchingSampler)  # the rank streams its mini-batches from the files
    for name, value in single_weights.items():
        assert torch.equal(value, ranked.bundle.state_dict[name]), name


def test_row_blocks_read_ahead_in_order_and_raise_a_bad_block(
    multilab_h5ad: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from model.errors import InputKindError

    memory_data, _ = load_labeled(multilab_h5ad)
    disk_data, _ = open_labeled(multilab_h5ad)
    blocks = list(disk_data.row_blocks(40))
    assert [b.shape[0] for b in blocks] == [40] * 15
    np.testing.assert_array_equal(
        np.vstack([b.toarray() for b in blocks]), memory_data.X.toarray()  # every row, in order
    )
    calls = []

    def check(block: object, kind: str) -> None:
        calls.append(kind)
        if len(calls) == 2:
            raise InputKindError("a negative value")

    monkeypatch.setattr(streaming, "check_values", check)
    with pytest.raises(InputKindError, match="cells 40-79 of the training cells: a negative value"):
        list(disk_data.row_blocks(40))
    disk_data.close()
