"""``celltype adapt`` and ``celltype score --adapt`` end to end on tiny synthetic data."""

from __future__ import annotations

import json

import numpy as np
import pytest

import cli.main
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
    assert "adapted 2 normalization layer(s)" in capsys.readouterr().out


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


def test_score_adapt_scores_with_the_adapted_model(trained, tmp_path) -> None:
    import anndata

    bundle_dir, target = trained
    out = tmp_path / "scored.h5ad"
    assert cli.main.main(["score", str(target), "--model", str(bundle_dir), "--out", str(out), "--adapt",
                          "--no-progress", "--device", "cpu"]) == 0
    adapted = load_bundle(tmp_path / "scored.h5ad.adapted_model")
    assert adapted.metadata["adaptation"]["parent_sha256"] == load_bundle(bundle_dir).sha256
    scored = anndata.read_h5ad(out)
    assert np.isfinite(scored.obs["confidence"].to_numpy()).all()
