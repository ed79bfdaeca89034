"""Accuracy levers kept as options (off by default): cell-noise augmentation and the lab adversary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.adversarial import GradientReversal, LabAdversary, reversal_strength
from training.augment import CellNoiseAugmenter, ComposedAugmenter, LabEffectAugmenter, augmenter_from_config
from training.config import ConfigError, TrainConfig


def test_levers_are_off_by_default() -> None:
    config = TrainConfig()
    assert (config.augment_gene_dropout, config.augment_library_scale, config.adversarial_weight) == (0.0, 0.0, 0.0)
    assert augmenter_from_config(config, ["a", "b"]) is None


def test_gene_dropout_only_zeroes_detected_genes_at_about_its_rate() -> None:
    inputs = torch.rand(400, 50) + 0.5
    inputs[:, :10] = 0.0
    out = CellNoiseAugmenter(gene_dropout=0.2, library_scale=0.0, seed=1)(inputs, np.arange(400))
    assert (out[:, :10] == 0).all()
    dropped = (out[:, 10:] == 0).float().mean().item()
    assert dropped == pytest.approx(0.2, abs=0.02)
    kept = out[:, 10:] != 0
    torch.testing.assert_close(out[:, 10:][kept], inputs[:, 10:][kept])


def test_library_scale_rescales_each_cell_in_count_space() -> None:
    inputs = torch.log1p(torch.rand(20, 30) * 5)
    out = CellNoiseAugmenter(gene_dropout=0.0, library_scale=0.5, seed=2)(inputs, np.arange(20))
    ratio = torch.expm1(out) / torch.expm1(inputs)
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-4, atol=1e-4)
    assert ratio[:, 0].std() > 0.1


def test_noise_is_reproducible_from_the_seed_and_its_checkpointed_state() -> None:
    inputs = torch.rand(8, 12)
    first, second = CellNoiseAugmenter(0.3, 0.2, seed=5), CellNoiseAugmenter(0.3, 0.2, seed=5)
    state = first.state_dict()
    a = first(inputs, np.arange(8))
    second.load_state_dict(state)
    torch.testing.assert_close(a, second(inputs, np.arange(8)))


def test_config_composes_lab_effect_and_cell_noise() -> None:
    config = TrainConfig(augment_mode="per_lab", augment_gene_dropout=0.1)
    augmenter = augmenter_from_config(config, ["a", "b", "a"])
    assert isinstance(augmenter, ComposedAugmenter)
    assert [type(p) for p in augmenter.parts] == [LabEffectAugmenter, CellNoiseAugmenter]
    assert augmenter(torch.rand(3, 4), np.arange(3)).shape == (3, 4)
    with pytest.raises(ConfigError, match="augment_gene_dropout"):
        TrainConfig(augment_gene_dropout=1.0)
    with pytest.raises(ConfigError, match="adversarial_weight"):
        TrainConfig(adversarial_weight=-1.0)


def test_gradient_reversal_flips_and_scales_the_gradient() -> None:
    x = torch.ones(3, 2, requires_grad=True)
    GradientReversal.apply(x, 0.5).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((3, 2), -0.5))
    assert reversal_strength(2.0, 0, 100) == 0.0
    assert reversal_strength(2.0, 100, 100) == pytest.approx(2.0, abs=1e-3)
    with pytest.raises(ValueError, match="two or more labs"):
        LabAdversary(4, 1)


def test_trainer_with_a_lab_adversary_trains_and_ignores_it_with_one_lab() -> None:
    from training.data import LabeledData
    from training.trainer import Trainer

    rng = np.random.default_rng(0)
    n, genes = 120, 20
    X = rng.poisson(1.0, (n, genes)).astype(np.float32)
    labels = np.array(["t1", "t2"] * (n // 2))
    X[labels == "t2", :5] += 5
    batches = np.array(["lab1"] * (n // 2) + ["lab2"] * (n // 2))
    import scipy.sparse as sp

    data = LabeledData(X=sp.csr_matrix(X), genes=[f"g{i}" for i in range(genes)], labels=labels, batches=batches,
                       cell_ids=np.array([f"c{i}" for i in range(n)]), input_kind="counts")
    config = TrainConfig(hidden_sizes=(16, 8), epochs=2, batch_size=16, adversarial_weight=0.5, device="cpu",
                         weight_averaging=False)
    trainer = Trainer(config, data, ["t1", "t2"], np.arange(n), np.arange(0))
    assert len(trainer.auxiliary_losses) == 1 and len(trainer.optimizer.param_groups) == 3
    trainer.fit()
    assert trainer.step > 0
    one_lab = Trainer(config, data, ["t1", "t2"], np.arange(n // 2), np.arange(0))
    assert one_lab.auxiliary_losses == []
