"""Data-parallel training: layer swaps, and 2 CPU ranks (gloo, torchrun) against one process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import cli.main
from model.batchrenorm import BatchRenorm1d
from model.bundle import load_bundle
from model.errors import InputError
from model.schedule import apply_renorm_limits
from training.config import TrainConfig
from training.data import load_labeled
from training.distributed import DataParallel, SyncBatchNorm1d, torchrun_command, use_synced_statistics
from training.pipeline import train_model

FAST = {"epochs": 2, "hidden_sizes": [32, 16], "validation_fraction": 0.0, "dropout": 0.0, "device": "cpu",
        "sampler": "shuffled", "weight_averaging": False}  # one process's global mini-batches: shuffled
# sampler only; and the step-by-step equivalence is checked on the raw weights, not their average


def test_sync_batchnorm_stays_plain_batchnorm_and_keeps_its_state_dict(seed) -> None:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 2), BatchRenorm1d(2))
    weight = model[1].weight
    assert use_synced_statistics(model) == 2
    assert isinstance(model[1], SyncBatchNorm1d) and model[1].weight is weight and model[3].sync_stats
    apply_renorm_limits(model, 3.0, 5.0)
    assert (model[1].r_max, model[1].d_max) == (1.0, 0.0) and model[3].r_max == 3.0
    x = torch.randn(16, 5)
    reference = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4))
    reference.load_state_dict({k: v for k, v in model.state_dict().items() if k.startswith(("0.", "1."))})
    torch.testing.assert_close(model[:2](x), reference(x))  # not initialized: local statistics = BN
    torch.testing.assert_close(model[1].running_mean, reference[1].running_mean)


def test_invalid_distributed_options_are_user_errors() -> None:
    with pytest.raises(InputError, match="dist-norm"):
        DataParallel("global")
    with pytest.raises(InputError, match="dist-stats-every"):
        DataParallel("local", 0)


def _run_ranks(tmp_path: Path, data: Path, config: dict, norm_mode: str) -> Path:
    out = tmp_path / f"out_{norm_mode}"
    spec = {
        "config": TrainConfig.from_dict(config).to_dict(), "data": [str(data)], "out": str(out),
        "tracking_uri": "", "register": None, "progress": False, "norm_mode": norm_mode,
        "stats_interval": 3, "publish": False,
    }
    spec_path = tmp_path / f"spec_{norm_mode}.json"
    spec_path.write_text(json.dumps(spec))
    done = subprocess.run(torchrun_command(spec_path, 2), capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["batchrenorm", "batchnorm"])
def test_sync_mode_equals_one_process_on_the_global_minibatches(norm, multilab_h5ad, tmp_path) -> None:
    config = {**FAST, "norm": norm, "batch_size": 16}
    out = _run_ranks(tmp_path, multilab_h5ad, config, "sync")
    distributed = load_bundle(out / "bundle")
    facts = json.loads((out / "metrics.json").read_text())["distributed"]
    assert facts["max_replica_difference"] == 0.0 and facts["global_batch_size"] == 32

    data, _ = load_labeled(multilab_h5ad)
    single = train_model(TrainConfig.from_dict({**config, "batch_size": 32}), data).bundle
    assert single.genes == distributed.genes
    # Raw weights are compared loosely: Adam turns the float noise of near-zero gradients (e.g. the
    # bias before a batch norm, whose true gradient is 0) into lr-sized steps, and the running means
    # absorb those biases. The function is what counts: probabilities within 0.05 (0.027 seen with
    # batchnorm after 3 epochs), and the same label for at least 99% of the cells.
    for key, value in single.state_dict.items():
        torch.testing.assert_close(distributed.state_dict[key], value, atol=2e-2, rtol=2e-2, msg=key)
    inputs = torch.from_numpy(data.select_genes(single.genes).model_input(np.arange(data.n_cells)))
    with torch.no_grad():
        ours, reference = distributed.build_model()(inputs), single.build_model()(inputs)
    probabilities = torch.softmax(ours, 1), torch.softmax(reference, 1)
    assert float((probabilities[0] - probabilities[1]).abs().max()) < 5e-2
    assert float((ours.argmax(1) == reference.argmax(1)).float().mean()) >= 0.99


@pytest.mark.slow
def test_cli_local_mode_trains_one_identical_bundle(multilab_h5ad, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code = cli.main.main([
        "train", str(multilab_h5ad), "--nproc", "2", "--dist-norm", "local", "--dist-stats-every", "2",
        "--out", str(out), "--tracking-uri", "http://127.0.0.1:9", "--no-progress", "--device", "cpu",
        "--set", "epochs=2", "--set", "hidden_sizes=32,16", "--set", "batch_size=16",
    ])
    assert code == 3  # trained and written, registry unreachable: the code of rank 0 comes through
    bundle = load_bundle(out / "bundle")
    facts = bundle.metadata["distributed"]
    assert facts == {**facts, "world_size": 2, "backend": "gloo", "norm_mode": "local", "max_replica_difference": 0.0}
    means = [v for k, v in bundle.state_dict.items() if k.endswith("running_mean")]
    assert means and all(float(m.abs().sum()) > 0 for m in means)  # statistics were learned
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 2 and np.isfinite(history[-1]["train_loss"])


def test_resume_is_refused_with_several_processes(multilab_h5ad, tmp_path, capsys) -> None:
    code = cli.main.main(["train", str(multilab_h5ad), "--nproc", "2", "--resume", "--out", str(tmp_path)])
    assert code == 2 and "--resume is not supported" in capsys.readouterr().err


def test_entry_point_is_importable_as_a_module() -> None:
    done = subprocess.run([sys.executable, "-c", "import training.distributed as d; print(d.DIST_NORM_MODES)"],
                          capture_output=True, text=True)
    assert "local" in done.stdout
