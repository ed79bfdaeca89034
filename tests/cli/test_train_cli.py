"""``celltype train`` end to end on a tiny synthetic .h5ad, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import cli.main
from training.synthetic import make_multilab

FAST = ["--no-progress", "--device", "cpu", "--set", "epochs=2", "--set", "hidden_sizes=32,16",
        "--set", "n_top_genes=60", "--set", "batch_size=32"]


@pytest.fixture(scope="module")
def h5ad(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "synthetic.h5ad"
    make_multilab(n_cells=360, n_genes=100, n_types=3, n_labs=3, seed=1).write_h5ad(path)
    return path


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_train_end_to_end_registers_a_version(h5ad, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = cli.main.main(
        ["train", str(h5ad), "--label-key", "cell_type", "--batch-key", "batch", "--holdout-batch", "lab_2",
         "--out", str(out), "--tracking-uri", uri, "--register", "tiny", "--seed", "3", *FAST]
    )
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    assert "held-out lab_2: accuracy" in stdout and "validation macro-F1" in stdout
    assert "registered tiny version 1" in stdout
    config = json.loads((out / "config.json").read_text())
    assert (config["seed"], config["epochs"], config["holdout_batches"]) == (3, 2, ["lab_2"])
    for name in ("history.json", "metrics.json", "data_report.json", "bundle/manifest.json"):
        assert (out / name).is_file()
    published = json.loads((out / "published.json").read_text())
    assert published["version"] == "1" and published["registered_model"] == "tiny"

    from mlflow import MlflowClient

    version = MlflowClient(tracking_uri=uri).get_model_version_by_alias("tiny", "challenger")
    assert version.tags["holdout_batches"] == "lab_2"
    assert float(version.tags["holdout_macro_f1"]) == pytest.approx(
        json.loads((out / "metrics.json").read_text())["holdout"]["overall"]["macro_f1"]
    )


def test_unreachable_registry_exits_3_and_keeps_the_bundle(h5ad, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code = cli.main.main(["train", str(h5ad), "--out", str(out), "--tracking-uri", "http://127.0.0.1:9", *FAST])
    assert code == 3
    assert "celltype register" in capsys.readouterr().err
    assert (out / "bundle" / "manifest.json").is_file()


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        (["missing.h5ad"], "not found"),
        (["{h5ad}", "--label-key", "no_such_column"], "no_such_column"),
        (["{h5ad}", "--holdout-batch", "lab_9"], "'lab_0', 'lab_1', 'lab_2'"),
        (["{h5ad}", "--set", "epoch=3"], "unknown config key 'epoch'"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(h5ad, tmp_path, capsys, arguments, fragment) -> None:
    arguments = [a.replace("{h5ad}", str(h5ad)) for a in arguments]
    code = cli.main.main(["train", *arguments, "--out", str(tmp_path / "run"), *FAST])
    assert code == 2
    line = _error_line(capsys)
    assert line.startswith("celltype train: error:") and fragment in line


def test_out_directory_in_use_needs_resume(h5ad, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "something").write_text("x")
    assert cli.main.main(["train", str(h5ad), "--out", str(out), *FAST]) == 2
    assert "--resume" in _error_line(capsys)
