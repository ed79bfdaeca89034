"""``celltype adapt`` and ``celltype score --adapt`` end to end on tiny synthetic data: the measured-effect
warning on both (issue 12), and corrupt target files refused with one line and exit 2 on both (issue 13)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import cli.main
from benchmarks.reliability.file_fuzz import issue_files
from model.adapt import ADAPTATION_WARNING, adaptation_warning
from model.bundle import load_bundle
from training.config import TrainConfig
from training.data import load_labeled
from training.outputs import write_run
from training.pipeline import train_model
from training.synthetic import make_multilab


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapt")
    adata = make_multilab(n_cells=400, n_genes=80, n_types=3, n_labs=3, lab_effect=0.8, seed=2)
    source = folder / "train.h5ad"
    adata[adata.obs["batch"] != "lab_2"].copy().write_h5ad(source)
    target = folder / "target.h5ad"
    new_lab = adata[adata.obs["batch"] == "lab_2"].copy()
    del new_lab.obs["cell_type"]
    new_lab.write_h5ad(target)
    data, _ = load_labeled(source)
    run = train_model(TrainConfig(epochs=2, hidden_sizes=(16, 8), device="cpu"), data)
    write_run(run, folder / "run")
    return folder / "run" / "bundle", target


def test_adapt_writes_a_new_bundle_with_lineage(trained, tmp_path, capsys) -> None:
    bundle_dir, target = trained
    out = tmp_path / "adapted"
    assert cli.main.main(["adapt", str(target), "--model", str(bundle_dir), "--out", str(out), "--inputs"]) == 0
    parent, adapted = load_bundle(bundle_dir), load_bundle(out / "bundle")
    lineage = adapted.metadata["adaptation"]
    assert lineage["parent_sha256"] == parent.sha256 and lineage["target_dataset"] == str(target)
    assert lineage["n_cells"] > 100 and lineage["restandardized_inputs"]
    assert json.loads((out / "metrics.json").read_text())["adaptation"]["n_cells"] == lineage["n_cells"]
    printed = capsys.readouterr()
    assert "adapted 2 normalization layer(s)" in printed.out
    assert adaptation_warning("adapt") in printed.err.splitlines()
    assert "-1.4 pp on average" in printed.err and "opt-in" in printed.err


def test_adapt_registers_a_version_with_parent_tags(trained, tmp_path, mlflow_sqlite_store) -> None:
    from mlflow import MlflowClient

    bundle_dir, target = trained
    name = "adapted-test"
    code = cli.main.main(["adapt", str(target), "--model", str(bundle_dir), "--out", str(tmp_path / "a"),
                          "--register", name, "--tracking-uri", mlflow_sqlite_store.uri])
    assert code == 0
    version = MlflowClient(tracking_uri=mlflow_sqlite_store.uri).get_model_version_by_alias(name, "challenger")
    assert version.tags["adapted_from"] == load_bundle(bundle_dir).sha256
    assert version.tags["bundle_sha256"] == load_bundle(tmp_path / "a" / "bundle").sha256


def test_adapt_refuses_a_used_out_directory_and_a_missing_file(trained, tmp_path, capsys) -> None:
    bundle_dir, target = trained
    (tmp_path / "x").write_text("taken")
    assert cli.main.main(["adapt", str(target), "--model", str(bundle_dir), "--out", str(tmp_path)]) == 2
    assert cli.main.main(["adapt", str(tmp_path / "nope.h5ad"), "--model", str(bundle_dir),
                          "--out", str(tmp_path / "new")]) == 2
    assert "not found" in capsys.readouterr().err


def test_score_adapt_scores_with_the_adapted_model(trained, tmp_path, capsys) -> None:
    import anndata

    bundle_dir, target = trained
    out = tmp_path / "scored.h5ad"
    assert cli.main.main(["score", str(target), "--model", str(bundle_dir), "--out", str(out), "--adapt",
                          "--no-progress", "--device", "cpu"]) == 0
    assert adaptation_warning("score --adapt") in capsys.readouterr().err.splitlines()
    adapted = load_bundle(tmp_path / "scored.h5ad.adapted_model")
    assert adapted.metadata["adaptation"]["parent_sha256"] == load_bundle(bundle_dir).sha256
    scored = anndata.read_h5ad(out)
    assert np.isfinite(scored.obs["confidence"].to_numpy()).all()


def test_score_without_adapt_prints_no_adaptation_warning(trained, tmp_path, capsys) -> None:
    bundle_dir, target = trained
    assert cli.main.main(["score", str(target), "--model", str(bundle_dir), "--out", str(tmp_path / "s.csv"),
                          "--no-progress", "--device", "cpu"]) == 0
    assert ADAPTATION_WARNING not in capsys.readouterr().err


def test_the_warning_carries_the_figures_of_docs_benchmarks() -> None:
    """The figures in :data:`ADAPTATION_WARNING` are docs/benchmarks.md's AdaBN line (batchrenorm, lab-homogeneous)."""
    docs = (Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md").read_text()
    line = next(line for line in docs.splitlines() if re.match(r"- \*\*AdaBN . none, batchrenorm, lab-homogeneous\*\*", line))
    held_out = line.split("synthetic")[0]
    figures = dict(re.findall(r"(\w+) ([+-]\d+\.\d) pp", held_out))
    assert len(figures) == 5, line
    for dataset, change in figures.items():
        shown = change.lstrip("+") if change.startswith("-") else change
        assert f"{dataset} {shown}" in ADAPTATION_WARNING, (dataset, change, ADAPTATION_WARNING)
    average = re.search(r"on average \(([+-]\d+\.\d) pp\)", held_out).group(1)
    assert f"by {average} pp on average over five real data sets" in ADAPTATION_WARNING


@pytest.fixture(scope="module")
def corrupt_targets(trained, tmp_path_factory) -> dict[str, Path]:
    """The three malformed files of issue 13 over the model's genes: a gene index far past the last gene,
    row pointers going backwards, fewer values than the row pointers claim."""
    bundle_dir, _ = trained
    return issue_files(list(load_bundle(bundle_dir).genes), tmp_path_factory.mktemp("corrupt"))


FAULTS = ("index_past_genes", "pointers_decrease", "data_short")


def one_error_line(err: str, command: str) -> str:
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith(f"celltype {command}: error:")]
    assert len(errors) == 1, err
    return errors[0]


@pytest.mark.parametrize("fault", FAULTS)
def test_adapt_refuses_a_corrupt_target_with_one_line(trained, corrupt_targets, tmp_path, capsys, fault) -> None:
    bundle_dir, _ = trained
    out = tmp_path / "adapted"
    code = cli.main.main(["adapt", str(corrupt_targets[fault]), "--model", str(bundle_dir), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "corrupt" in one_error_line(err, "adapt")
    assert not (out / "bundle").exists()


@pytest.mark.parametrize("fault", FAULTS)
def test_score_adapt_refuses_a_corrupt_input_with_one_line(trained, corrupt_targets, tmp_path, capsys, fault) -> None:
    bundle_dir, _ = trained
    out = tmp_path / "scored.csv"
    code = cli.main.main(["score", str(corrupt_targets[fault]), "--model", str(bundle_dir), "--out", str(out),
                          "--adapt", "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2, err
    line = one_error_line(err, "score")
    assert "corrupt" in line and str(corrupt_targets[fault]) in line
    assert not out.exists() and not (tmp_path / "scored.csv.adapted_model").exists()


def test_adapt_reads_a_random_subset_in_blocks(trained, tmp_path, monkeypatch) -> None:
    """``--max-cells`` picks a seeded subset through the block reader; small blocks give the same cells."""
    import anndata

    import model.adapt
    from model.adapt import read_target_cells

    _, target = trained
    whole, genes = read_target_cells(target, max_cells=50, seed=3)
    monkeypatch.setattr(model.adapt, "READ_BLOCK_CELLS", 7)
    blocked, _ = read_target_cells(target, max_cells=50, seed=3)
    adata = anndata.read_h5ad(target)
    rows = np.sort(np.random.default_rng(3).choice(adata.n_obs, 50, replace=False))
    expected = adata.X[rows]
    expected = expected.toarray() if hasattr(expected, "toarray") else np.asarray(expected)
    for got in (whole, blocked):
        got = got.toarray() if hasattr(got, "toarray") else np.asarray(got)
        np.testing.assert_array_equal(got, expected)
    assert genes == [str(g) for g in adata.var_names]
