"""One training run in memory: :func:`train_model` (split, genes, fit, calibrate, score, bundle).

Nothing is written here but the loop's checkpoints: :mod:`training.outputs` writes a finished
:class:`TrainingRun` to its output directory and :mod:`training.run` is the whole command (load, train,
write, publish). The loop itself is :class:`training.trainer.Trainer`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from model.bundle import ModelBundle
from model.errors import InputError
from model.predict import resolve_device
from model.provenance import celltype_version
from model.threads import torch_threads
from training.augment import augmenter_from_config
from training.calibration import fit_temperature, softmax
from training.config import TrainConfig
from training.data import LabeledData
from training.genes import select_genes
from training.metrics import classification_scores, per_batch_scores, summary
from training.splits import Split, make_split
from training.strict_json import json_ready
from training.trainer import FitResult, Trainer
from training.unknown import fit_unknown_checks


@dataclass
class TrainingRun:
    """Everything a finished run produced, before (or without) writing it to disk.

    Attributes:
        config: the resolved config.
        bundle: the trained model bundle (temperature and metadata set).
        split: which cells trained, validated and were held out.
        fit: the loop's result (history, selected epoch).
        metrics: ``{"validation", "holdout": {"overall", "per_batch"}, "calibration"}`` as in
            ``metrics.json``.
        reports: per split name, the data needed for its plots: scores, and the confidence and
            correctness of the scored cells.
    """

    config: TrainConfig
    bundle: ModelBundle
    split: Split
    fit: FitResult
    metrics: dict[str, Any]
    reports: dict[str, dict[str, Any]]


def _plot_data(truth: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Confidence and correctness of the argmax prediction for the cells of known types."""
    known = np.isin(truth, classes)
    chosen = np.asarray(classes, dtype=object)[probabilities[known].argmax(axis=1)] if known.any() else []
    confidence = probabilities[known].max(axis=1) if known.any() else np.zeros(0)
    return confidence, truth[known] == np.asarray(chosen, dtype=object)


def _argmax_labels(probabilities: np.ndarray, classes: list[str]) -> np.ndarray:
    return np.asarray(classes, dtype=object)[probabilities.argmax(axis=1)] if len(probabilities) else np.array([])


def _on_configured_cpu_threads(function: Callable[..., TrainingRun]) -> Callable[..., TrainingRun]:
    """Run ``function(config, data, ...)`` with ``config.cpu_threads`` torch threads when training on CPU."""

    @functools.wraps(function)
    def run(config: TrainConfig, data: LabeledData, **options: Any) -> TrainingRun:
        threads = config.cpu_threads if resolve_device(config.device).type == "cpu" else 0
        with torch_threads(threads):
            return function(config, data, **options)

    return run


@_on_configured_cpu_threads
def train_model(
    config: TrainConfig,
    data: LabeledData,
    *,
    datasets: list[str] | None = None,
    out_dir: str | Path | None = None,
    progress: bool = False,
    resume: bool = False,
    score_holdout: bool = True,
    rank: int = 0,
    world_size: int = 1,
    configure_trainer: Callable[[Trainer], None] | None = None,
) -> TrainingRun:
    """Train a model on ``data`` as ``config`` says and score it; nothing is written but checkpoints.

    Steps: hold out ``config.holdout_batches``; split validation cells off the training batches;
    select genes on the training cells; fit (with checkpoints in ``out_dir/checkpoints`` when
    ``out_dir`` is given; ``resume`` continues from them); fit the temperature on the validation
    logits; fit the Unknown checks (:mod:`training.unknown`: novelty detector on the training cells,
    threshold on the validation cells; ``min_detected_genes``); score validation and each held-out
    batch; build the bundle with its metadata.

    ``rank``/``world_size`` place this process in data-parallel training (the sampler's shard);
    ``configure_trainer`` is called with the :class:`Trainer` before fitting (hooks, layer swaps).
    The lab-effect augmentation of ``config.augment_mode`` is applied to training inputs.

    Raises:
        InputError: unknown hold-out batch, or fewer than two cell types left to train on.
    """
    started = time.perf_counter()
    split = make_split(data.labels, data.batches, config.holdout_batches, config.validation_fraction, config.seed)
    labels = np.asarray(data.labels).astype(str)
    classes = sorted(set(labels[split.train].tolist()))
    if len(classes) < 2:
        raise InputError(
            f"the training cells have {len(classes)} cell type(s) ({', '.join(classes)}); a classifier needs "
            f"at least two: check --label-key or hold out fewer batches"
        )
    n_top = None if config.n_top_genes == "all" else int(config.n_top_genes)
    genes = select_genes(data.subset(split.train), n_top, config.gene_selection)
    model_data = data.select_genes(genes)

    trainer = Trainer(
        config, model_data, classes, split.train, split.validation, out_dir=out_dir, progress=progress,
        rank=rank, world_size=world_size, input_transform=augmenter_from_config(config, model_data.batches),
    )
    if configure_trainer is not None:  # e.g. data-parallel setup (training.distributed)
        configure_trainer(trainer)
    fit = trainer.fit(resume=resume)
    metrics: dict[str, Any] = {}
    reports: dict[str, dict[str, Any]] = {}

    temperature, ece_before, ece_after = 1.0, float("nan"), float("nan")
    metrics["validation"] = None
    if len(split.validation):
        logits = trainer.logits(model_data, split.validation)
        truth = labels[split.validation]
        temperature = fit_temperature(logits, trainer.targets[split.validation])
        predicted = _argmax_labels(logits, classes)
        ece_before = classification_scores(truth, predicted, classes, softmax(logits))["ece"]
        probabilities = softmax(logits, temperature)
        scores = classification_scores(truth, predicted, classes, probabilities)
        ece_after = scores["ece"]
        metrics["validation"] = scores
        confidence, correct = _plot_data(truth, probabilities, classes)
        reports["validation"] = {"scores": scores, "confidence": confidence, "correct": correct}

    unknown = fit_unknown_checks(
        config, trainer.model, model_data, trainer.targets, split.train, split.validation, temperature, trainer.device
    )
    metrics["unknown_checks"] = unknown.report

    holdout: dict[str, Any] = {"overall": None, "per_batch": {}}
    if score_holdout and len(split.holdout):
        probabilities = softmax(trainer.logits(model_data, split.holdout), temperature)
        truth = labels[split.holdout]
        batches = np.asarray(data.batches).astype(str)[split.holdout]
        predicted = _argmax_labels(probabilities, classes)
        holdout["overall"] = classification_scores(truth, predicted, classes, probabilities)
        holdout["per_batch"] = per_batch_scores(truth, predicted, batches, classes, probabilities)
        for batch, scores in holdout["per_batch"].items():
            rows = batches == batch
            confidence, correct = _plot_data(truth[rows], probabilities[rows], classes)
            reports[f"holdout_{batch}"] = {"scores": scores, "confidence": confidence, "correct": correct}
    metrics["holdout"] = holdout
    metrics["calibration"] = {"temperature": temperature, "ece_before": ece_before, "ece_after": ece_after}
    metrics["training"] = {
        "best_epoch": fit.best_epoch,
        "selected": fit.selected,
        "epochs_run": len(fit.history),
        "steps": fit.steps,
        "total_steps": trainer.total_steps,
        "stopped_early": fit.stopped_early,
        "n_genes": len(genes),
        "n_cells_train": int(len(split.train)),
        "n_cells_validation": int(len(split.validation)),
        "n_cells_holdout": int(len(split.holdout)),
        "seconds": time.perf_counter() - started,
    }

    overall = holdout["overall"]
    metadata = {
        "datasets": list(datasets or data.sources),
        "label_key": config.label_key,
        "batch_key": config.batch_key,
        "train_batches": list(split.train_batches),
        "holdout_batches": list(split.holdout_batches),
        "holdout_scores": {"accuracy": overall["accuracy"], "macro_f1": overall["macro_f1"]} if overall else None,
        "validation_scores": summary(metrics["validation"]) if metrics["validation"] else None,
        "n_cells_train": int(len(split.train)),
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "celltype_version": celltype_version(),
        "training_config": config.to_dict(),
    }
    bundle = ModelBundle.from_model(
        trainer.model,
        genes=list(genes),
        gene_identifiers=model_data.gene_identifiers,
        classes=classes,
        preprocessing=model_data.preprocessing,
        temperature=temperature,
        unknown_threshold=config.unknown_threshold,
        novelty=unknown.novelty,
        min_detected_genes=unknown.min_detected_genes,
        metadata=json_ready(metadata),
    )
    return TrainingRun(config=config, bundle=bundle, split=split, fit=fit, metrics=metrics, reports=reports)
