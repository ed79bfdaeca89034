"""``celltype score`` on the command line: output, summary, exit codes, one-line errors, kill and resume."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from service.scoring import executors

from .files import N_CELLS, make_counts, write_h5ad

REPO_ROOT = Path(__file__).resolve().parents[3]


def test_success_writes_the_output_and_prints_a_summary(celltype, bundle_dir, counts_file, tmp_path, capsys):
    out = tmp_path / "out.parquet"
    assert celltype(counts_file, "--model", bundle_dir, "--out", out, "--top-k", "1", "--no-progress") == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert f"scored {N_CELLS} cells in" in captured.out and "cells/s" in captured.out
    assert "unknown share:" in captured.out and "labels:" in captured.out
    assert "counts (detected), 50/60 model genes found" in captured.out
    assert list(pd.read_parquet(out).columns)[-2:] == ["top1_label", "top1_prob"]


def test_progress_bar_goes_to_stderr(celltype, bundle_dir, counts_file, tmp_path, capsys):
    assert (
        celltype(counts_file, "--model", bundle_dir, "--out", tmp_path / "out.csv", "--chunk-size", "30") == 0
    )
    captured = capsys.readouterr()
    assert (
        "scoring: 100%" in captured.err
        and "cells/s" in captured.err
        and f"{N_CELLS}/{N_CELLS}" in captured.err
    )
    assert "scoring:" not in captured.out


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


ERROR_CASES = {
    "missing input": (lambda d, c: [d / "nope.h5ad", "--out", d / "o.csv"], "nope.h5ad: no such file"),
    "unsupported suffix": (lambda d, c: [c, "--out", d / "o.xlsx"], "unsupported output suffix '.xlsx'"),
    "output dir missing": (lambda d, c: [c, "--out", d / "no" / "o.csv"], "does not exist"),
    "output dir not writable": (lambda d, c: [c, "--out", "/proc/o.csv"], "cannot"),
    "h5ad with two inputs": (lambda d, c: [c, c, "--out", d / "o.h5ad"], "exactly one input"),
    "wrong input kind": (
        lambda d, c: [c, "--out", d / "o.csv", "--input", "lognorm"],
        "holds only whole numbers",
    ),
    "missing layer": (lambda d, c: [c, "--out", d / "o.csv", "--layer", "raw"], "has no layer 'raw'"),
    "unreachable scheduler": (
        lambda d, c: [c, "--out", d / "o.csv", "--scheduler", f"tcp://127.0.0.1:{_unused_port()}"],
        "cannot reach the Dask scheduler",
    ),
}


@pytest.mark.parametrize("case", ERROR_CASES)
def test_errors_are_one_line_with_exit_code_2(
    celltype, bundle_dir, counts_file, tmp_path, capsys, monkeypatch, case
):
    monkeypatch.setattr(executors, "SCHEDULER_TIMEOUT_S", 1.0)
    make_args, message = ERROR_CASES[case]
    assert celltype(*make_args(tmp_path, counts_file), "--model", bundle_dir, "--no-progress") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("celltype score: error: ") and message in lines[0]


def test_gene_mismatch_and_bad_model_are_one_line(celltype, bundle_dir, tmp_path, capsys):
    X, _ = make_counts(n_cells=5)
    other = write_h5ad(tmp_path / "other.h5ad", X, [f"ENSG{i:011d}" for i in range(X.shape[1])])
    assert celltype(other, "--model", bundle_dir, "--out", tmp_path / "o.csv") == 2
    assert "other.h5ad: only 0 of the model's 60 genes" in capsys.readouterr().err
    assert celltype(other, "--model", tmp_path / "no-bundle", "--out", tmp_path / "o.csv") == 2
    assert "no model bundle" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when there is no GPU")
def test_cuda_without_a_gpu_is_a_clear_error(celltype, bundle_dir, counts_file, tmp_path, capsys):
    assert celltype(counts_file, "--model", bundle_dir, "--out", tmp_path / "o.csv", "--device", "cuda") == 2
    assert "no CUDA GPU is available" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["--chunk-size", "0"],
        ["--top-k", "-1"],
        ["--workers", "0"],
        ["--workers", "2", "--scheduler", "tcp://x:1"],
    ],
)
def test_bad_options_are_usage_errors(celltype, bundle_dir, counts_file, tmp_path, capsys, args):
    with pytest.raises(SystemExit) as exit_info:
        celltype(counts_file, "--model", bundle_dir, "--out", tmp_path / "o.csv", *args)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


KILL_AFTER_CHUNKS = """
import os, signal, sys
import cli.main
from service.scoring_io import ChunkResult
save, saved = ChunkResult.save, []
def save_then_die(self, path):
    save(self, path)
    saved.append(path)
    if len(saved) == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)
ChunkResult.save = save_then_die
sys.exit(cli.main.main(sys.argv[2:]))
"""


def test_a_killed_run_resumes_to_the_uninterrupted_output(celltype, bundle_dir, counts_file, tmp_path):
    expected = tmp_path / "expected.csv"
    assert (
        celltype(counts_file, "--model", bundle_dir, "--out", expected, "--chunk-size", "25", "--no-progress")
        == 0
    )
    out = tmp_path / "out.csv"
    args = ["score", counts_file, "--model", bundle_dir, "--out", out, "--chunk-size", "25", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_CHUNKS, "2", *(str(a) for a in args)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    assert not out.exists()
    partial = tmp_path / ".out.csv.partial"
    assert sorted(p.name for p in partial.glob("chunk-*")) == [
        "chunk-0000-0000000.npz",
        "chunk-0000-0000001.npz",
    ]

    assert celltype(*args[1:], "--resume") == 0
    assert not partial.exists()
    pd.testing.assert_frame_equal(pd.read_csv(out), pd.read_csv(expected), check_exact=True)
