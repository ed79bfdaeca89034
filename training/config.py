"""The training configuration: one frozen dataclass holding everything a run needs.

Values come, in increasing priority, from the defaults below, a config file (``--config FILE``: TOML or
JSON, a flat table of keys), ``--set key=value`` overrides and the explicit command-line flags. The
resolved config is saved in ``config.json`` and in the bundle's metadata, so a run can be repeated from
it. An unknown key is an error that names the key and lists the valid ones.
"""

from __future__ import annotations

import difflib
import json
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from model.errors import CellTypeError
from model.norms import NORM_LAYERS
from model.novelty import DEFAULT_METHOD, DEFAULT_QUANTILE, METHODS
from model.schedule import DEFAULT_SCHEDULE, RenormSchedule
from training.augment import AUGMENT_MODES
from training.genes import GENE_SELECTION_METHODS
from training.streaming import DATA_MODES

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: TOML config files need 3.11; JSON works everywhere
    tomllib = None  # type: ignore[assignment]

SAMPLERS = ("shuffled", "lab_homogeneous", "class_balanced")
"""Mini-batch samplers (see :mod:`training.samplers`)."""
DEVICES = ("auto", "cpu", "cuda")
"""Devices a run may ask for; ``auto`` is CUDA when available, else CPU."""
NO_NOVELTY = "none"
"""``novelty_method`` value that bundles no novelty detector."""


class ConfigError(CellTypeError, ValueError):
    """A training configuration key or value is invalid; the message says which and what is allowed."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs (defaults chosen with ``benchmarks/lobo.py``).

    Data:
        label_key: ``obs`` column with the cell types.
        batch_key: ``obs`` column with the batch (lab, protocol, donor) of each cell.
        holdout_batches: batches never used in training; scored separately.
        data_mode: ``auto`` (from the data size against the available memory), ``memory`` or ``disk``
            (read rows from the files as training needs them, :mod:`training.streaming`).
    Genes:
        n_top_genes: number of genes kept by the selection (``"all"`` keeps every gene).
        gene_selection: selection method (see :mod:`training.genes`).
    Model (see :class:`model.classifier.ClassifierConfig`):
        hidden_sizes, norm, activation, dropout, input_dropout, norm_momentum, input_clip.
    Optimization:
        lr: peak AdamW learning rate. weight_decay: AdamW weight decay.
        warmup_fraction: share of the steps with a linear learning-rate warm-up; cosine decay after.
        min_lr_ratio: final learning rate as a share of ``lr``.
        epochs: passes over the training cells. max_steps: cap on optimizer steps (0: no cap).
        batch_size: cells per optimizer step. sampler: how mini-batches are drawn.
        sampler_block_rows: shuffle in blocks of this many contiguous rows (:mod:`training.samplers`);
            0: single cells in memory, blocks of ``training.streaming.DEFAULT_BLOCK_ROWS`` on disk. Set it
            to make the memory and disk paths draw the same mini-batches (and so train the same weights).
    Batch Renormalization schedule (:class:`model.schedule.RenormSchedule`, which holds the defaults;
    as fractions of all optimizer steps, so that it scales with short and long runs alike):
        brn_warmup_fraction: plain batch norm (r_max = 1, d_max = 0) for this share of the run.
        brn_r_max_final, brn_d_max_final: the final clipping limits.
        brn_r_ramp_end_fraction, brn_d_ramp_end_fraction: share of the run at which each limit,
            relaxed linearly after the warm-up, reaches its final value.
    Model selection and loss:
        patience: epochs without a better validation macro-F1 before stopping (0: never stop early).
            Without weight averaging the weights of the best validation epoch are restored at the end.
        weight_averaging: end with the uniform average of the weights of every optimizer step after
            ``averaging_start_fraction`` of the run (stochastic weight averaging, a single model; the
            norm layers' running statistics are recomputed for it). Averaging beat best-epoch
            selection on held-out labs in ``benchmarks/lobo.py`` (mostly on rare classes).
        averaging_start_fraction: share of the run after which weights are averaged, in [0, 1).
        validation_fraction: share of each (batch, cell type) group of the training batches kept for
            validation (model selection, early stopping, calibration).
        class_weighting: weight the loss by inverse class frequency raised to ``class_weight_power``.
        class_weight_power: 1 is full inverse-frequency weighting, 0 none.
        label_smoothing: label smoothing of the cross-entropy loss.
    Run:
        seed: seeds torch, numpy, the split and the sampler. device: auto, cpu or cuda.
        cpu_threads: torch CPU threads while training on the CPU (0: torch's default, one per core).
            1 is the default: these MLPs are small, and several threads on a shared CPU made a
            cellbench run 10x slower here (80 s instead of 8 s).
        mixed_precision: autocast matrix products to bfloat16/float16 on CUDA (normalization stays fp32).
        unknown_threshold: confidence below which predictions are "Unknown".
    Unknown checks stored in the bundle (:mod:`training.unknown`):
        novelty_method: the novelty scorer (:data:`model.novelty.METHODS`, default
            :data:`model.novelty.DEFAULT_METHOD`; ``none``: no novelty check), fitted on the training
            cells' features (:func:`model.novelty.novelty_features`: standardized input, last hidden
            layer, logits; each scorer takes its own).
        novelty_quantile: its threshold is this quantile of the scores of the validation cells
            (training labs only).
        min_genes_quantile: ``min_detected_genes`` is this quantile of the number of detected model
            genes per training cell (at least 1).
    Lab-effect augmentation (:mod:`training.augment`; ``--set augment.mode=per_lab``):
        augment_mode: none, per_lab or per_batch. augment_scale: std of the gene-wise log-scale.
        augment_shift: std of the gene-wise shift of log expression.
        augment_gene_dropout: per-cell probability of dropping a detected gene (0: off).
        augment_library_scale: std of the per-cell log library-size factor (0: off).
    Lab-adversarial head (:mod:`training.adversarial`):
        adversarial_weight: weight of the gradient-reversed lab-classification loss on the last
            hidden layer (0: off; needs two or more training labs).
    """

    label_key: str = "cell_type"
    batch_key: str = "batch"
    holdout_batches: tuple[str, ...] = ()
    data_mode: str = "auto"
    n_top_genes: int | str = 2000
    gene_selection: str = "hvg_batch_aware"
    hidden_sizes: tuple[int, ...] = (256, 128)
    norm: str = "batchrenorm"
    activation: str = "relu"
    dropout: float = 0.2
    input_dropout: float = 0.0
    norm_momentum: float = 0.01
    input_clip: float = 10.0
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.01
    epochs: int = 30
    max_steps: int = 0
    batch_size: int = 64
    sampler: str = "lab_homogeneous"
    sampler_block_rows: int = 0
    brn_warmup_fraction: float = DEFAULT_SCHEDULE.warmup_fraction
    brn_r_max_final: float = DEFAULT_SCHEDULE.r_max_final
    brn_d_max_final: float = DEFAULT_SCHEDULE.d_max_final
    brn_r_ramp_end_fraction: float = DEFAULT_SCHEDULE.r_ramp_end_fraction
    brn_d_ramp_end_fraction: float = DEFAULT_SCHEDULE.d_ramp_end_fraction
    patience: int = 0
    weight_averaging: bool = True
    averaging_start_fraction: float = 0.5
    validation_fraction: float = 0.1
    class_weighting: bool = True
    class_weight_power: float = 0.5
    label_smoothing: float = 0.1
    seed: int = 0
    device: str = "auto"
    cpu_threads: int = 1
    mixed_precision: bool = True
    unknown_threshold: float = 0.5
    novelty_method: str = DEFAULT_METHOD
    novelty_quantile: float = DEFAULT_QUANTILE
    min_genes_quantile: float = 0.001
    augment_mode: str = "none"
    augment_scale: float = 0.1
    augment_shift: float = 0.1
    augment_gene_dropout: float = 0.0
    augment_library_scale: float = 0.0
    adversarial_weight: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name), _HINTS[f.name]))
        self._validate()

    def _validate(self) -> None:
        checks: list[tuple[bool, str]] = [
            (bool(self.label_key), "label_key must not be empty"),
            (bool(self.batch_key), "batch_key must not be empty"),
            (self.n_top_genes == "all" or (isinstance(self.n_top_genes, int) and self.n_top_genes >= 1),
             f"n_top_genes must be a positive integer or 'all' (got {self.n_top_genes!r})"),
            (self.gene_selection in GENE_SELECTION_METHODS,
             f"gene_selection must be one of {', '.join(GENE_SELECTION_METHODS)} (got {self.gene_selection!r})"),
            (bool(self.hidden_sizes) and min(self.hidden_sizes) >= 1,
             f"hidden_sizes must be one or more positive widths (got {list(self.hidden_sizes)})"),
            (self.norm in NORM_LAYERS, f"norm must be one of {', '.join(NORM_LAYERS)} (got {self.norm!r})"),
            (0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1) (got {self.dropout})"),
            (0.0 <= self.input_dropout < 1.0, f"input_dropout must be in [0, 1) (got {self.input_dropout})"),
            (0.0 < self.norm_momentum <= 1.0, f"norm_momentum must be in (0, 1] (got {self.norm_momentum})"),
            (self.input_clip > 0, f"input_clip must be positive (got {self.input_clip})"),
            (self.lr > 0, f"lr must be positive (got {self.lr})"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0 (got {self.weight_decay})"),
            (0.0 <= self.warmup_fraction < 1.0, f"warmup_fraction must be in [0, 1) (got {self.warmup_fraction})"),
            (0.0 <= self.min_lr_ratio <= 1.0, f"min_lr_ratio must be in [0, 1] (got {self.min_lr_ratio})"),
            (self.epochs >= 1, f"epochs must be >= 1 (got {self.epochs})"),
            (self.max_steps >= 0, f"max_steps must be >= 0, 0 meaning no cap (got {self.max_steps})"),
            (self.batch_size >= 2, f"batch_size must be >= 2 for batch statistics (got {self.batch_size})"),
            (self.sampler in SAMPLERS, f"sampler must be one of {', '.join(SAMPLERS)} (got {self.sampler!r})"),
            (self.sampler_block_rows >= 0,
             f"sampler_block_rows must be >= 0, 0 meaning the data mode's default (got {self.sampler_block_rows})"),
            (self.data_mode in DATA_MODES, f"data_mode must be one of {', '.join(DATA_MODES)} (got {self.data_mode!r})"),
            (self.patience >= 0, f"patience must be >= 0, 0 meaning no early stopping (got {self.patience})"),
            (0.0 <= self.averaging_start_fraction < 1.0,
             f"averaging_start_fraction must be in [0, 1) (got {self.averaging_start_fraction})"),
            (0.0 <= self.validation_fraction < 1.0,
             f"validation_fraction must be in [0, 1) (got {self.validation_fraction})"),
            (self.class_weight_power >= 0, f"class_weight_power must be >= 0 (got {self.class_weight_power})"),
            (0.0 <= self.label_smoothing < 1.0, f"label_smoothing must be in [0, 1) (got {self.label_smoothing})"),
            (self.seed >= 0, f"seed must be >= 0 (got {self.seed})"),
            (self.cpu_threads >= 0, f"cpu_threads must be >= 0, 0 meaning torch's default (got {self.cpu_threads})"),
            (self.device in DEVICES or self.device.startswith("cuda:"),
             f"device must be one of {', '.join(DEVICES)} (got {self.device!r})"),
            (0.0 <= self.unknown_threshold <= 1.0,
             f"unknown_threshold must be in [0, 1] (got {self.unknown_threshold})"),
            (self.novelty_method in (*METHODS, NO_NOVELTY),
             f"novelty_method must be one of {', '.join((*METHODS, NO_NOVELTY))} (got {self.novelty_method!r})"),
            (0.0 < self.novelty_quantile < 1.0, f"novelty_quantile must be in (0, 1) (got {self.novelty_quantile})"),
            (0.0 <= self.min_genes_quantile < 1.0,
             f"min_genes_quantile must be in [0, 1) (got {self.min_genes_quantile})"),
            (self.augment_mode in AUGMENT_MODES,
             f"augment_mode must be one of {', '.join(AUGMENT_MODES)} (got {self.augment_mode!r})"),
            (self.augment_scale >= 0 and self.augment_shift >= 0,
             f"augment_scale and augment_shift must be >= 0 (got {self.augment_scale}, {self.augment_shift})"),
            (0.0 <= self.augment_gene_dropout < 1.0,
             f"augment_gene_dropout must be in [0, 1) (got {self.augment_gene_dropout})"),
            (self.augment_library_scale >= 0,
             f"augment_library_scale must be >= 0 (got {self.augment_library_scale})"),
            (self.adversarial_weight >= 0, f"adversarial_weight must be >= 0 (got {self.adversarial_weight})"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        try:
            self.renorm_schedule  # noqa: B018 - builds and validates the schedule
        except ValueError as exc:  # the schedule names its fields; the config keys carry a brn_ prefix
            raise ConfigError(f"brn_{exc}") from None

    @property
    def renorm_schedule(self) -> RenormSchedule:
        """The Batch Renormalization schedule of the ``brn_*`` keys."""
        return RenormSchedule(
            warmup_fraction=self.brn_warmup_fraction,
            r_max_final=self.brn_r_max_final,
            d_max_final=self.brn_d_max_final,
            r_ramp_end_fraction=self.brn_r_ramp_end_fraction,
            d_ramp_end_fraction=self.brn_d_ramp_end_fraction,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every key (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from a flat mapping of keys; unknown keys raise :class:`ConfigError`."""
        check_keys(data.keys())
        return cls(**dict(data))

    def updated(self, changes: Mapping[str, Any]) -> TrainConfig:
        """A copy with ``changes`` applied (values may be strings, parsed like ``--set``)."""
        check_keys(changes.keys())
        return replace(self, **dict(changes))


_HINTS: dict[str, Any] = typing.get_type_hints(TrainConfig)
KEYS: tuple[str, ...] = tuple(f.name for f in fields(TrainConfig))
"""Every valid configuration key, in declaration order."""

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def check_keys(keys: Iterable[str]) -> None:
    """Raise :class:`ConfigError` for the first key that is not a :class:`TrainConfig` field."""
    for key in keys:
        if key not in KEYS:
            close = difflib.get_close_matches(key, KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown config key {key!r}{hint}; valid keys: {', '.join(KEYS)}")


def _bad(name: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"config key {name!r} expects {expected}, got {value!r}")


def _split_list(text: str) -> list[str]:
    text = text.strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list):
            return [str(item) for item in parsed]
        text = text.strip("[]")
    return [part.strip() for part in text.split(",") if part.strip()]


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Convert ``value`` (native, or a string from ``--set``) to the type ``hint`` of key ``name``."""
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _bad(name, value, "true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise _bad(name, value, "an integer")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise _bad(name, value, "a number")
    if hint is str:
        if isinstance(value, str):
            return value
        raise _bad(name, value, "a string")
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # n_top_genes: int | "all"
        if isinstance(value, str) and value.strip().lower() == "all":
            return "all"
        return _coerce(name, value, int)
    if typing.get_origin(hint) is tuple:
        item_type = typing.get_args(hint)[0]
        items = _split_list(value) if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise _bad(name, value, "a list (e.g. 512,256)")
        return tuple(_coerce(name, item, item_type) for item in items)
    raise TypeError(f"no conversion for config key {name!r} of type {hint!r}")


def parse_assignments(assignments: Iterable[str]) -> dict[str, str]:
    """Parse ``--set`` arguments of the form ``key=value`` into a dict (later ones win).

    Raises:
        ConfigError: an argument without ``=`` or with an unknown key.
    """
    changes: dict[str, str] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        key = key.strip()
        if key.startswith("augment."):  # --set augment.mode=per_lab names augment_mode
            key = "augment_" + key[len("augment."):]
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}; valid keys: {', '.join(KEYS)}")
        check_keys([key])
        changes[key] = value
    return changes


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a flat table of config keys from a ``.toml`` or ``.json`` file (keys are checked).

    Raises:
        ConfigError: the file is missing, unreadable, of another format, not a flat table, or has an
            unknown key.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise ConfigError(f"config file {path} must end in .toml or .json (got {suffix or 'no suffix'!r})")
    if suffix == ".toml" and tomllib is None:
        raise ConfigError(f"reading TOML config {path} needs Python 3.11 or newer; write it as JSON instead")
    try:
        text = path.read_text()
        data = tomllib.loads(text) if suffix == ".toml" else json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise ConfigError(f"cannot parse config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table of key = value pairs")
    nested = [k for k, v in data.items() if isinstance(v, dict)]
    if nested:
        raise ConfigError(
            f"config file {path} has a nested table {nested[0]!r}; write the keys at the top level"
        )
    check_keys(data.keys())
    return data


def resolve_config(
    config_file: str | Path | None = None,
    assignments: Iterable[str] = (),
    explicit: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """Defaults, then the config file, then ``--set`` assignments, then explicit flags (``None`` = unset)."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(read_config_file(config_file))
    values.update(parse_assignments(assignments))
    values.update({k: v for k, v in (explicit or {}).items() if v is not None})
    return TrainConfig.from_dict(values)
