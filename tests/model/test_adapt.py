"""AdaBN adaptation: only running statistics change, per-cell invariance stays, lineage, and it helps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.adapt import adapt_bundle, adapt_model
from model.bundle import ModelBundle, load_bundle, save_bundle
from model.classifier import CellTypeClassifier, ClassifierConfig
from model.errors import InputError
from model.preprocessing import Preprocessing


def _bundle(norm: str = "batchrenorm") -> ModelBundle:
    torch.manual_seed(0)
    model = CellTypeClassifier(ClassifierConfig(n_genes=12, n_classes=3, hidden_sizes=(8, 6), norm=norm))
    model.train()
    for _ in range(5):
        model(torch.randn(32, 12))
    return ModelBundle.from_model(
        model, genes=[f"g{i}" for i in range(12)], classes=["a", "b", "c"],
        preprocessing=Preprocessing(input_kind="lognorm"), sha256="parent-digest", metadata={"datasets": ["x"]},
    )


@pytest.mark.parametrize("norm", ["batchrenorm", "batchnorm"])
def test_only_running_statistics_change(norm, seed) -> None:
    bundle = _bundle(norm)
    target = np.random.default_rng(seed).normal(3.0, 2.0, size=(200, 12)).astype(np.float32)
    adapted = adapt_bundle(bundle, target, target="lab_x")
    changed = {k for k in bundle.state_dict if not torch.equal(bundle.state_dict[k], adapted.state_dict[k])}
    assert changed == {f"blocks.{i}.1.running_{s}" for i in (0, 1) for s in ("mean", "var")}
    model = adapted.build_model()
    # the statistics are the exact moments of each layer's input on the target
    hidden = model.blocks[0][0](model.standardize(torch.from_numpy(target)))
    torch.testing.assert_close(model.blocks[0][1].running_mean, hidden.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.blocks[0][1].running_var, hidden.var(0), atol=1e-4, rtol=1e-4)


def test_input_restandardization_is_optional_and_uses_the_target(seed) -> None:
    bundle = _bundle()
    target = np.random.default_rng(seed).normal(5.0, 2.0, size=(300, 12)).astype(np.float32)
    adapted = adapt_bundle(bundle, target, target="t", restandardize_inputs=True)
    np.testing.assert_allclose(adapted.state_dict["input_mean"].numpy(), target.mean(0), rtol=1e-4)
    np.testing.assert_allclose(adapted.state_dict["input_scale"].numpy(), target.std(0), rtol=1e-3)
    assert adapted.metadata["adaptation"]["restandardized_inputs"] is True


def test_adapted_model_stays_per_cell_and_records_lineage(tmp_path, seed) -> None:
    bundle = _bundle()
    target = np.random.default_rng(seed).normal(1.0, 1.0, size=(100, 12)).astype(np.float32)
    adapted = adapt_bundle(bundle, target, target="new_lab.h5ad", parent={"name": "m", "version": "4"})
    digest = save_bundle(adapted, tmp_path / "b")
    loaded = load_bundle(tmp_path / "b")
    lineage = loaded.metadata["adaptation"]
    assert loaded.sha256 == digest != bundle.sha256 and bundle.state_dict is not adapted.state_dict
    assert lineage["parent_sha256"] == "parent-digest" == loaded.metadata["adapted_from"]
    assert lineage["parent"] == {"name": "m", "version": "4"}
    assert (lineage["target_dataset"], lineage["n_cells"]) == ("new_lab.h5ad", 100)
    model = loaded.build_model()
    x = torch.from_numpy(target)
    with torch.no_grad():
        together = model(x)
        alone = torch.cat([model(x[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_bad_targets_are_user_errors() -> None:
    model = _bundle().build_model()
    with pytest.raises(InputError, match="shape"):
        adapt_model(model, np.zeros((10, 5), np.float32))
    with pytest.raises(InputError, match="at least 2"):
        adapt_model(model, np.zeros((1, 12), np.float32))
    with pytest.raises(InputError, match="no batch-normalization"):
        adapt_model(_bundle("layernorm").build_model(), np.zeros((10, 12), np.float32))


@pytest.mark.slow
def test_adaptation_improves_an_unseen_lab_with_a_strong_lab_effect() -> None:
    from training.config import TrainConfig
    from training.data import LabeledData
    from training.metrics import classification_scores
    from training.pipeline import train_model
    from training.synthetic import make_multilab

    adata = make_multilab(n_cells=1600, n_genes=200, n_types=4, n_labs=4, lab_effect=1.0, seed=5)
    data = LabeledData(X=adata.X.tocsr(), genes=list(map(str, adata.var_names)),
                       labels=np.asarray(adata.obs["cell_type"]).astype(str),
                       batches=np.asarray(adata.obs["batch"]).astype(str),
                       cell_ids=np.asarray(adata.obs_names).astype(str), input_kind="counts")
    config = TrainConfig(holdout_batches=("lab_3",), epochs=8, hidden_sizes=(64, 32), device="cpu",
                         sampler="lab_homogeneous")
    run = train_model(config, data)
    held = np.flatnonzero(data.batches == "lab_3")
    inputs = data.select_genes(run.bundle.genes).model_input(held)

    def macro_f1(bundle) -> float:
        with torch.no_grad():
            logits = bundle.build_model()(torch.from_numpy(inputs)).numpy()
        predicted = np.asarray(bundle.classes)[logits.argmax(1)]
        return classification_scores(data.labels[held], predicted, bundle.classes)["macro_f1"]

    before = macro_f1(run.bundle)
    after = macro_f1(adapt_bundle(run.bundle, inputs, target="lab_3", restandardize_inputs=True))
    assert after > before + 0.02, (before, after)
