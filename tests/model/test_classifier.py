"""Tests for the classifier, its config and the norm-layer factory."""

import pytest
import torch
from torch import nn

from model.batchrenorm import BatchRenorm1d
from model.classifier import CellTypeClassifier, ClassifierConfig
from model.norms import NORM_LAYERS, create_norm


@pytest.mark.parametrize("norm", NORM_LAYERS)
def test_blocks_are_linear_norm_activation_dropout(norm):
    model = CellTypeClassifier(ClassifierConfig(n_genes=10, n_classes=3, hidden_sizes=(8, 4), norm=norm))
    block = model.blocks[0]
    assert isinstance(block[0], nn.Linear) and isinstance(block[2], nn.ReLU) and isinstance(block[3], nn.Dropout)
    expected = {"batchrenorm": BatchRenorm1d, "batchnorm": nn.BatchNorm1d, "layernorm": nn.LayerNorm, "none": nn.Identity}
    assert isinstance(block[1], expected[norm])
    assert model(torch.randn(5, 10)).shape == (5, 3)


def test_config_round_trip_and_validation():
    config = ClassifierConfig(n_genes=10, n_classes=3, hidden_sizes=[8], dropout=0.1)
    assert ClassifierConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown norm"):
        ClassifierConfig(n_genes=10, n_classes=3, norm="groupnorm")
    with pytest.raises(ValueError, match="dropout"):
        ClassifierConfig(n_genes=10, n_classes=3, dropout=1.0)
    with pytest.raises(ValueError, match="newer celltype"):
        ClassifierConfig.from_dict({**config.to_dict(), "attention": True})


def test_create_norm_unknown_name():
    with pytest.raises(ValueError, match="choose one of batchrenorm"):
        create_norm("instancenorm", 4)


def test_input_scaling_standardizes_and_clips():
    model = CellTypeClassifier(ClassifierConfig(n_genes=3, n_classes=2, input_clip=2.0))
    model.set_input_scaling(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([2.0, 1.0, 0.0]))
    out = model.standardize(torch.tensor([[3.0, 5.0, 1.0]]))
    torch.testing.assert_close(out, torch.tensor([[1.0, 2.0, 2.0]]))
    assert model.input_scale[2] == pytest.approx(1e-3)
