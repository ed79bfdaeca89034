"""Lab-effect augmentation: the affine model per lab / per mini-batch, config keys, training only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.augment import LabEffectAugmenter, augmenter_from_config
from training.config import ConfigError, TrainConfig, resolve_config


def test_per_lab_draws_are_shared_within_a_lab_and_differ_between_labs(seed) -> None:
    batches = np.array(["a", "a", "b", "b"])
    augment = LabEffectAugmenter(batches, "per_lab", scale=0.5, shift=0.0, seed=seed)
    z = torch.ones(4, 6)
    x = augment(z, np.arange(4))
    torch.testing.assert_close(x[0], x[1])
    torch.testing.assert_close(x[2], x[3])
    assert not torch.allclose(x[0], x[2])
    # x = a ⊙ z with log a ~ N(0, 0.5²): positive factors, not all 1
    assert (x > 0).all() and not torch.allclose(x[0], z[0])


def test_per_batch_uses_one_draw_and_zeros_stay_zero(seed) -> None:
    augment = LabEffectAugmenter(np.array(["a", "b", "c"]), "per_batch", scale=0.3, shift=0.5, seed=seed)
    z = torch.tensor([[1.0, 0.0, 2.0], [1.0, 0.0, 2.0], [1.0, 3.0, 0.0]])
    x = augment(z, np.arange(3))
    torch.testing.assert_close(x[0], x[1])
    assert x[0, 1] == 0 and x[2, 2] == 0 and (x >= 0).all()
    assert x[0, 0] == x[2, 0]


def test_draws_are_reproducible_from_the_seed(seed) -> None:
    rows, z = np.arange(2), torch.rand(2, 5)
    first = LabEffectAugmenter(["a", "b"], "per_lab", 0.2, 0.2, seed=seed)(z, rows)
    second = LabEffectAugmenter(["a", "b"], "per_lab", 0.2, 0.2, seed=seed)(z, rows)
    torch.testing.assert_close(first, second)


def test_config_keys_and_set_syntax() -> None:
    config = resolve_config(None, ["augment.mode=per_lab", "augment.scale=0.3", "augment_shift=0.2"])
    assert (config.augment_mode, config.augment_scale, config.augment_shift) == ("per_lab", 0.3, 0.2)
    assert augmenter_from_config(TrainConfig(), ["a"]) is None
    assert isinstance(augmenter_from_config(config, ["a"]), LabEffectAugmenter)
    with pytest.raises(ConfigError, match="augment_mode"):
        resolve_config(None, ["augment.mode=sometimes"])
    with pytest.raises(ConfigError, match="augment_scale"):
        TrainConfig(augment_scale=-1.0)


def test_training_applies_the_augmentation_to_training_inputs_only(multilab_adata) -> None:
    from training.data import LabeledData
    from training.pipeline import train_model

    a = multilab_adata
    data = LabeledData(X=a.X.tocsr(), genes=list(map(str, a.var_names)), labels=np.asarray(a.obs["cell_type"]).astype(str),
                       batches=np.asarray(a.obs["batch"]).astype(str), cell_ids=np.asarray(a.obs_names).astype(str),
                       input_kind="counts")
    seen: list[int] = []

    def spy(trainer) -> None:
        inner = trainer.input_transform
        assert isinstance(inner, LabEffectAugmenter)

        def transform(inputs, rows):
            seen.append(len(rows))
            return inner(inputs, rows)

        trainer.input_transform = transform

    config = TrainConfig(epochs=1, hidden_sizes=(16,), device="cpu", augment_mode="per_lab", augment_scale=0.2)
    run = train_model(config, data, configure_trainer=spy)
    assert sum(seen) == len(run.split.train)  # every training cell once, nothing at evaluation
