"""TrainConfig: defaults, config files, --set overrides and the errors for bad keys and values."""

from __future__ import annotations

import json

import pytest

from model.schedule import DEFAULT_SCHEDULE, RenormSchedule
from training.config import (
    KEYS,
    ConfigError,
    TrainConfig,
    parse_assignments,
    read_config_file,
    resolve_config,
)


def test_defaults_are_valid_and_round_trip_through_json() -> None:
    config = TrainConfig()
    data = json.loads(json.dumps(config.to_dict()))
    assert TrainConfig.from_dict(data) == config
    assert config.norm == "batchrenorm"


def test_set_overrides_are_parsed_to_the_field_types() -> None:
    config = resolve_config(
        None,
        ["epochs=7", "lr=3e-3", "hidden_sizes=512,128", "class_weighting=false", "n_top_genes=all",
         "holdout_batches=lab_1, lab_2", "sampler=class_balanced"],
    )
    assert config.epochs == 7 and isinstance(config.epochs, int)
    assert config.lr == pytest.approx(3e-3)
    assert config.hidden_sizes == (512, 128)
    assert config.class_weighting is False
    assert config.n_top_genes == "all"
    assert config.holdout_batches == ("lab_1", "lab_2")
    assert config.sampler == "class_balanced"
    assert resolve_config(None, ["hidden_sizes=[64, 32]", "n_top_genes=300"]).hidden_sizes == (64, 32)


def test_priority_file_then_set_then_explicit_flags(tmp_path) -> None:
    path = tmp_path / "train.toml"
    path.write_text('epochs = 3\nseed = 4\nlabel_key = "ct"\nhidden_sizes = [32, 16]\n')
    config = resolve_config(path, ["seed=5"], {"seed": 6, "batch_key": None})
    assert (config.epochs, config.seed, config.label_key, config.hidden_sizes) == (3, 6, "ct", (32, 16))
    assert config.batch_key == "batch"
    json_path = tmp_path / "train.json"
    json_path.write_text(json.dumps({"epochs": 2, "dropout": 0.1}))
    assert resolve_config(json_path).dropout == pytest.approx(0.1)


@pytest.mark.parametrize("assignment", ["epoch=3", "learning_rate=0.1"])
def test_unknown_set_key_names_the_key_and_lists_valid_ones(assignment: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_assignments([assignment])
    message = str(error.value)
    assert repr(assignment.split("=")[0]) in message
    assert all(key in message for key in KEYS)


def test_unknown_file_key_and_suggestion(tmp_path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("epocs = 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'epocs' \(did you mean 'epochs'\?\)"):
        read_config_file(path)


@pytest.mark.parametrize(
    ("assignment", "fragment"),
    [
        ("epochs=many", "expects an integer"),
        ("lr=-1", "lr must be positive"),
        ("dropout=1.5", "dropout must be in"),
        ("norm=groupnorm", "norm must be one of"),
        ("sampler=random", "sampler must be one of"),
        ("class_weighting=maybe", "true or false"),
        ("n_top_genes=0", "n_top_genes must be"),
        ("device=tpu", "device must be one of"),
        ("noequals", "expects key=value"),
    ],
)
def test_bad_values_are_clear_errors(assignment: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        resolve_config(None, [assignment])


def test_bad_config_files(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        read_config_file(tmp_path / "missing.toml")
    yaml = tmp_path / "c.yaml"
    yaml.write_text("epochs: 3\n")
    with pytest.raises(ConfigError, match=r"\.toml or \.json"):
        read_config_file(yaml)
    broken = tmp_path / "c.toml"
    broken.write_text("epochs = = 3\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        read_config_file(broken)
    nested = tmp_path / "n.toml"
    nested.write_text("[model]\ndropout = 0.1\n")
    with pytest.raises(ConfigError, match="nested table 'model'"):
        read_config_file(nested)


def test_config_is_frozen() -> None:
    config = TrainConfig()
    with pytest.raises(AttributeError):
        config.epochs = 3  # type: ignore[misc]
    assert config.updated({"epochs": "3"}).epochs == 3


def test_the_batch_renorm_schedule_defaults_come_from_the_model() -> None:
    assert TrainConfig().renorm_schedule == DEFAULT_SCHEDULE
    config = resolve_config(None, ["brn_warmup_fraction=0.2", "brn_r_max_final=2"])
    assert config.renorm_schedule == RenormSchedule(warmup_fraction=0.2, r_max_final=2.0)
    with pytest.raises(ConfigError, match="brn_r_ramp_end_fraction must be in"):
        resolve_config(None, ["brn_warmup_fraction=0.6"])
    with pytest.raises(ConfigError, match="brn_d_max_final must be a finite number"):
        resolve_config(None, ["brn_d_max_final=-1"])
