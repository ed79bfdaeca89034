"""The training loop: :class:`Trainer` (``train_step``, ``evaluate``, ``fit``) over a :class:`LabeledData`.

One optimizer step: set the learning rate and the Batch Renormalization limits for this step (both pure
functions of the step), build the mini-batch's model input with ``data.model_input(rows)`` (exactly the
inference preprocessing), forward (autocast on CUDA only), weighted cross-entropy, backward, an optional
gradient hook (e.g. a data-parallel all-reduce), AdamW, and (late in the run) the running average of
the weights. After each epoch: validation macro-F1 for early stopping (:class:`EarlyStopping`) and
best-epoch selection, then a checkpoint that ``fit(resume=True)`` continues from to the very same final
weights. The run ends with the averaged weights (norm statistics recomputed) or, without averaging, the
best validation epoch's.

The sampler's ``rank``/``world_size`` and the ``gradient_hook`` are where data-parallel training plugs in.
The whole run around the loop (split, genes, calibration, scores, bundle) is :mod:`training.pipeline`.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from model.batchrenorm import BatchRenorm1d
from model.classifier import CellTypeClassifier, ClassifierConfig
from model.genes import gene_list_hash
from model.predict import resolve_device
from model.schedule import apply_renorm_limits
from model.threads import torch_threads
from training.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from training.config import TrainConfig
from training.data import LabeledData
from training.lr_schedule import learning_rate
from training.metrics import classification_scores
from training.samplers import make_sampler
from training.streaming import INPUT_CACHE_BYTES

STATS_CHUNK = 4096
"""Cells per chunk when computing the per-gene input statistics."""

GradientHook = Callable[[nn.Module], None]
InputTransform = Callable[[torch.Tensor, np.ndarray], torch.Tensor]
"""A training-time input transform (augmentation). If it has ``state_dict()``/``load_state_dict()``
(e.g. its random generator's state), that state is checkpointed so that a resumed run stays exact."""
EpochCallback = Callable[[dict[str, Any]], None]


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def class_weights(labels: np.ndarray, n_classes: int, power: float) -> np.ndarray:
    """Tempered inverse-frequency class weights ``(n / (K n_c)) ** power``, scaled so the mean weight
    over the training cells is 1. ``power = 0`` gives all ones; absent classes get weight 0."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes, dtype=np.float64)
    weights[present] = (counts.sum() / (present.sum() * counts[present])) ** power
    weights *= counts.sum() / float((weights * counts).sum())
    return weights


def input_statistics(data: LabeledData, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and standard deviation of the model input of ``rows``, streamed in chunks."""
    n_genes = len(data.genes)
    total = np.zeros(n_genes, dtype=np.float64)
    total_sq = np.zeros(n_genes, dtype=np.float64)
    for start in range(0, len(rows), STATS_CHUNK):
        chunk = data.model_input(rows[start : start + STATS_CHUNK]).astype(np.float64)
        total += chunk.sum(axis=0)
        total_sq += np.square(chunk).sum(axis=0)
    n = max(len(rows), 1)
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - np.square(mean), 0.0))
    return mean.astype(np.float32), std.astype(np.float32)


@dataclass
class EarlyStopping:
    """Tracks the best validation score and its weights; ``bad_epochs`` counts epochs since."""

    patience: int
    best_score: float = -math.inf
    best_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    best_state: dict[str, torch.Tensor] | None = None

    def update(self, epoch: int, score: float, loss: float, model: nn.Module) -> bool:
        """Record an epoch's validation macro-F1 and loss; return True when it is the new best.

        Ties in macro-F1 (common once a validation set is classified perfectly) go to the lower loss.
        """
        better = score > self.best_score + 1e-9 or (abs(score - self.best_score) <= 1e-9 and loss < self.best_loss)
        if better:
            self.best_score, self.best_loss, self.best_epoch, self.bad_epochs = score, loss, epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.bad_epochs += 1
        return better

    @property
    def should_stop(self) -> bool:
        """True once ``patience`` epochs in a row brought no improvement (never with patience 0)."""
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        """Plain values and tensors, for checkpoints."""
        return {
            "best_score": self.best_score,
            "best_loss": self.best_loss,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.best_score = float(state["best_score"])
        self.best_loss = float(state["best_loss"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        self.best_state = state["best_state"]


@dataclass
class Evaluation:
    """Logits of a set of cells with their targets, loss and scores (argmax predictions)."""

    logits: np.ndarray
    targets: np.ndarray
    loss: float
    scores: dict[str, Any]


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` did.

    Attributes:
        history: one record per epoch.
        best_epoch: the epoch whose weights were kept (the last one when weights were averaged).
        best_score: its validation macro-F1 (NaN when weights were averaged or there is no validation).
        steps: optimizer steps taken.
        stopped_early: whether early stopping ended the run.
        seconds: wall time of the loop.
        resumed_from_epoch: epochs already done when the run was resumed (0 for a fresh run).
        selected: which weights the model ended with, in words.
    """

    history: list[dict[str, Any]]
    best_epoch: int
    best_score: float
    steps: int
    stopped_early: bool
    seconds: float
    resumed_from_epoch: int = 0
    selected: str = ""


class Trainer:
    """Trains a :class:`CellTypeClassifier` on rows of a :class:`LabeledData`.

    Args:
        config: the resolved training config.
        data: the cells, already restricted to the model's genes.
        classes: the model's cell types (probability column order).
        train_rows: rows of ``data`` to learn from.
        validation_rows: rows of ``data`` for early stopping (may be empty: then no early stopping).
        out_dir: where ``checkpoints/`` are written each epoch (``None``: no checkpoints).
        progress: show tqdm bars (only when stderr is a terminal).
        rank, world_size: this process's place in data-parallel training (passed to the sampler).
        gradient_hook: called with the model after each backward pass, before the optimizer step.
        input_transform: applied to each training mini-batch's model input with its rows (training only),
            e.g. :class:`training.augment.LabEffectAugmenter`.
    """

    def __init__(
        self,
        config: TrainConfig,
        data: LabeledData,
        classes: list[str],
        train_rows: np.ndarray,
        validation_rows: np.ndarray,
        *,
        out_dir: str | Path | None = None,
        progress: bool = False,
        rank: int = 0,
        world_size: int = 1,
        gradient_hook: GradientHook | None = None,
        input_transform: InputTransform | None = None,
    ) -> None:
        self.config = config
        self.data = data
        self.classes = list(classes)
        self.train_rows = np.asarray(train_rows, dtype=np.int64)
        self.validation_rows = np.asarray(validation_rows, dtype=np.int64)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress and sys.stderr.isatty()
        self.rank, self.world_size = rank, world_size
        self.gradient_hook = gradient_hook
        self.input_transform = input_transform
        self.device = resolve_device(config.device)

        seed_everything(config.seed)
        index = {name: i for i, name in enumerate(self.classes)}
        self.targets = np.array([index.get(str(label), -1) for label in data.labels], dtype=np.int64)
        if (self.targets[self.train_rows] < 0).any():
            raise ValueError("every training cell's label must be one of the model's classes")

        self.model = CellTypeClassifier(
            ClassifierConfig(
                n_genes=len(data.genes),
                n_classes=len(self.classes),
                hidden_sizes=config.hidden_sizes,
                norm=config.norm,
                activation=config.activation,
                dropout=config.dropout,
                input_dropout=config.input_dropout,
                norm_momentum=config.norm_momentum,
                input_clip=config.input_clip,
            )
        )
        mean, std = input_statistics(data, self.train_rows)
        self.model.set_input_scaling(torch.from_numpy(mean), torch.from_numpy(std))
        self.model.to(self.device)

        decay, no_decay = [], []
        for name, parameter in self.model.named_parameters():
            (decay if parameter.dim() > 1 and "norm" not in name else no_decay).append(parameter)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr,
        )
        power = config.class_weight_power if config.class_weighting else 0.0
        weights = class_weights(self.targets[self.train_rows], len(self.classes), power)
        self.loss_weights = torch.tensor(weights, dtype=torch.float32, device=self.device)

        self.sampler = make_sampler(
            config.sampler,
            labels=np.asarray(data.labels)[self.train_rows],
            batches=np.asarray(data.batches)[self.train_rows],
            batch_size=config.batch_size,
            seed=config.seed,
            rank=rank,
            world_size=world_size,
        )
        self.renorm_schedule = config.renorm_schedule
        self.steps_per_epoch = max(1, len(self.sampler))
        planned = config.epochs * self.steps_per_epoch
        self.total_steps = min(planned, config.max_steps) if config.max_steps else planned
        self.step = 0
        self.average: dict[str, torch.Tensor] | None = None
        self.n_averaged = 0
        self.average_start = (
            math.floor(config.averaging_start_fraction * self.total_steps) if config.weight_averaging else None
        )

        self.use_amp = config.mixed_precision and self.device.type == "cuda"
        amp_dtype = torch.bfloat16 if self.use_amp and torch.cuda.is_bf16_supported() else torch.float16
        self.amp_dtype = amp_dtype
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and amp_dtype == torch.float16)
        self.auxiliary_losses: list[Callable[[np.ndarray], torch.Tensor]] = []
        """Extra loss terms per training step, each called with the mini-batch's rows after the forward pass."""
        if config.adversarial_weight > 0:
            from training.adversarial import attach_lab_adversary

            attach_lab_adversary(self, config.adversarial_weight)
        self._cache: torch.Tensor | None = None
        self._cache_position: np.ndarray | None = None
        if len(self.train_rows) * len(data.genes) * 4 <= INPUT_CACHE_BYTES:
            self._cache = torch.from_numpy(data.model_input(self.train_rows)).to(self.device)
            self._cache_position = np.full(len(data.labels), -1, dtype=np.int64)
            self._cache_position[self.train_rows] = np.arange(len(self.train_rows))

    # -- one step -------------------------------------------------------------------------------

    def inputs(self, rows: np.ndarray) -> torch.Tensor:
        """The model input of ``rows`` of the data (from the cache when they are cached), on the device."""
        if self._cache is not None and self._cache_position is not None:
            positions = self._cache_position[rows]
            if (positions >= 0).all():
                return self._cache[torch.from_numpy(positions).to(self.device)]
        return torch.from_numpy(self.data.model_input(rows)).to(self.device)

    def _autocast(self) -> Any:
        return torch.autocast("cuda", dtype=self.amp_dtype) if self.use_amp else nullcontext()

    def set_step_hyperparameters(self, step: int) -> dict[str, float]:
        """Set the learning rate and the BRN limits for optimizer step ``step``; return them."""
        lr = learning_rate(
            step,
            self.total_steps,
            base_lr=self.config.lr,
            warmup_fraction=self.config.warmup_fraction,
            min_lr_ratio=self.config.min_lr_ratio,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        r_max, d_max = self.renorm_schedule(step, self.total_steps)
        apply_renorm_limits(self.model, r_max, d_max)
        return {"lr": lr, "r_max": r_max, "d_max": d_max}

    def train_step(self, rows: np.ndarray) -> float:
        """One optimizer step on the cells ``rows``; returns the mini-batch loss."""
        self.model.train()
        self.set_step_hyperparameters(self.step)
        inputs = self.inputs(rows)
        if self.input_transform is not None:  # training-time augmentation (e.g. lab effects)
            inputs = self.input_transform(inputs, rows)
        targets = torch.from_numpy(self.targets[rows]).to(self.device)
        with self._autocast():
            logits = self.model(inputs)
        loss = F.cross_entropy(
            logits.float(), targets, weight=self.loss_weights, label_smoothing=self.config.label_smoothing
        )
        for auxiliary in self.auxiliary_losses:  # e.g. the lab adversary (training.adversarial)
            loss = loss + auxiliary(rows)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.gradient_hook is not None:
            self.gradient_hook(self.model)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        if self.average_start is not None and self.step > self.average_start:
            self._update_average()
        return float(loss.detach())

    @torch.no_grad()
    def _update_average(self) -> None:
        """Fold the current parameters into their running (uniform) average."""
        params = {k: p.detach() for k, p in self.model.named_parameters()}
        if self.average is None:
            self.average = {k: p.clone() for k, p in params.items()}
            self.n_averaged = 1
            return
        self.n_averaged += 1
        for k, p in params.items():
            self.average[k].lerp_(p, 1.0 / self.n_averaged)

    @torch.no_grad()
    def use_averaged_weights(self) -> None:
        """Load the averaged parameters into the model and recompute its norm layers' statistics."""
        if self.average is None:
            raise ValueError("no weights have been averaged yet")
        for name, parameter in self.model.named_parameters():
            parameter.copy_(self.average[name])
        self.recalibrate_norms()

    @torch.no_grad()
    def recalibrate_norms(self, chunk: int = 4096) -> None:
        """Recompute the running mean/variance of every batch(-re)norm layer over the training cells.

        Layer by layer, each from its exact input statistics over all training cells with the layers
        before it already recalibrated; dropout stays active, as during training, so the statistics
        match what the layers saw while they trained. Needed after averaging weights: running
        statistics gathered along the way belong to the individual weights, not to their average.
        """
        layers = [m for m in self.model.modules() if isinstance(m, (nn.BatchNorm1d, BatchRenorm1d))]
        self.model.eval()
        for module in self.model.modules():
            if isinstance(module, nn.Dropout):
                module.train()
        # Dropout draws from a generator seeded by the config alone: every rank of a data-parallel run
        # computes the same statistics, and the training RNG streams are left untouched.
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.config.seed)
            self._recalibrate(layers, chunk)
        self.model.eval()

    def _recalibrate(self, layers: list[nn.Module], chunk: int) -> None:
        for layer in layers:
            sums = torch.zeros_like(layer.running_mean, dtype=torch.float64)
            squares = torch.zeros_like(sums)
            count = [0]

            def collect(
                module: nn.Module, args: tuple[torch.Tensor, ...], sums: torch.Tensor = sums,
                squares: torch.Tensor = squares, count: list[int] = count,
            ) -> None:
                x = args[0].detach().double()
                sums.add_(x.sum(0))
                squares.add_(x.square().sum(0))
                count[0] += x.shape[0]

            handle = layer.register_forward_pre_hook(collect)
            for start in range(0, len(self.train_rows), chunk):
                self.model(self.inputs(self.train_rows[start : start + chunk]))
            handle.remove()
            n = count[0]
            mean = sums / n
            var = (squares / n - mean.square()).clamp_min(0) * (n / max(n - 1, 1))
            layer.running_mean.copy_(mean.to(layer.running_mean.dtype))
            layer.running_var.copy_(var.to(layer.running_var.dtype))

    # -- evaluation -----------------------------------------------------------------------------

    @torch.no_grad()
    def logits(self, data: LabeledData, rows: np.ndarray | None = None, chunk: int = 8192) -> np.ndarray:
        """Eval-mode logits (float32, untempered) of ``rows`` of ``data`` (default: all cells)."""
        self.model.eval()
        rows = np.arange(len(data.labels)) if rows is None else np.asarray(rows, dtype=np.int64)
        out = np.zeros((len(rows), len(self.classes)), dtype=np.float32)
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            inputs = torch.from_numpy(data.model_input(part)).to(self.device)
            with self._autocast():
                out[start : start + len(part)] = self.model(inputs).float().cpu().numpy()
        return out

    def evaluate(self, rows: np.ndarray) -> Evaluation:
        """Logits, (unweighted) cross-entropy and scores of the training data's ``rows``."""
        logits = self.logits(self.data, rows)
        targets = self.targets[rows]
        known = targets >= 0
        loss = (
            float(F.cross_entropy(torch.from_numpy(logits[known]), torch.from_numpy(targets[known])))
            if known.any()
            else float("nan")
        )
        predicted = np.asarray(self.classes, dtype=object)[logits.argmax(axis=1)] if len(rows) else np.array([])
        scores = classification_scores(np.asarray(self.data.labels)[rows], predicted, self.classes)
        return Evaluation(logits=logits, targets=targets, loss=loss, scores=scores)

    # -- the loop -------------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """What a checkpoint must have been made with to be resumed here: the config and the data's shape."""
        return {
            **self.config.to_dict(),
            "data.gene_list_hash": gene_list_hash(self.data.genes),
            "data.classes": list(self.classes),
            "data.n_train": int(len(self.train_rows)),
            "data.n_validation": int(len(self.validation_rows)),
        }

    def _checkpoint_state(self, epoch: int, stopper: EarlyStopping, history: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "settings": self.settings(),
            "epoch": epoch,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng_state(),
            "early_stopping": stopper.state_dict(),
            "average": self.average,
            "n_averaged": self.n_averaged,
            "input_transform": (
                self.input_transform.state_dict() if hasattr(self.input_transform, "state_dict") else None
            ),
            "history": history,
        }

    def fit(self, *, resume: bool = False, epoch_callback: EpochCallback | None = None) -> FitResult:
        """Train until ``epochs``/``max_steps`` or early stopping, then settle on the final weights: the
        average of the late steps (``weight_averaging``), else the best validation epoch's.

        Args:
            resume: continue from ``out_dir/checkpoints`` (same config required).
            epoch_callback: called with each epoch's history record, after its checkpoint is written.
        """
        with torch_threads(self.config.cpu_threads if self.device.type == "cpu" else 0):
            return self._fit(resume, epoch_callback)

    def _fit(self, resume: bool, epoch_callback: EpochCallback | None) -> FitResult:
        stopper = EarlyStopping(self.config.patience)
        history: list[dict[str, Any]] = []
        first_epoch = 0
        if resume:
            if self.out_dir is None:
                raise ValueError("resume needs an out_dir holding the checkpoints")
            state = load_checkpoint(self.out_dir, self.settings())
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            stopper.load_state_dict(state["early_stopping"])
            self.average, self.n_averaged = state["average"], int(state["n_averaged"])
            if state["input_transform"] is not None and hasattr(self.input_transform, "load_state_dict"):
                self.input_transform.load_state_dict(state["input_transform"])
            history = list(state["history"])
            first_epoch, self.step = int(state["epoch"]), int(state["step"])
            restore_rng_state(state["rng"])
        has_validation = len(self.validation_rows) > 0
        started = time.perf_counter()
        stopped_early = stopper.should_stop if has_validation else False
        epochs = tqdm(
            range(first_epoch, self.config.epochs),
            desc="epochs",
            unit="epoch",
            disable=not self.progress,
            initial=first_epoch,
            total=self.config.epochs,
        )
        for epoch in epochs:
            if self.step >= self.total_steps or stopped_early:
                break
            epoch_start = time.perf_counter()
            losses, sizes = [], []
            batches = self.sampler.batches(epoch)
            for rows in tqdm(batches, desc=f"epoch {epoch + 1}", unit="step", leave=False, disable=not self.progress):
                if self.step >= self.total_steps:
                    break
                rows = self.train_rows[np.asarray(rows, dtype=np.int64)]
                losses.append(self.train_step(rows))
                sizes.append(len(rows))
            limits = self.set_step_hyperparameters(max(self.step - 1, 0))
            record: dict[str, Any] = {
                "epoch": epoch + 1,
                "step": self.step,
                "lr": limits["lr"],
                "train_loss": float(np.average(losses, weights=sizes)) if losses else float("nan"),
                "val_loss": float("nan"),
                "val_accuracy": float("nan"),
                "val_macro_f1": float("nan"),
                "r_max": limits["r_max"],
                "d_max": limits["d_max"],
            }
            if has_validation:
                evaluation = self.evaluate(self.validation_rows)
                record.update(
                    val_loss=evaluation.loss,
                    val_accuracy=evaluation.scores["accuracy"],
                    val_macro_f1=evaluation.scores["macro_f1"],
                )
                stopper.update(epoch + 1, evaluation.scores["macro_f1"], evaluation.loss, self.model)
                stopped_early = stopper.should_stop
            record["seconds"] = time.perf_counter() - epoch_start
            history.append(record)
            epochs.set_postfix(loss=f"{record['train_loss']:.3f}", val_f1=f"{record['val_macro_f1']:.3f}")
            if self.out_dir is not None:
                save_checkpoint(self.out_dir, self._checkpoint_state(epoch + 1, stopper, history))
            if epoch_callback is not None:
                epoch_callback(record)
        epochs.close()
        if self.average is not None:
            self.use_averaged_weights()
            selected = f"average of steps {self.average_start + 1}-{self.step} ({self.n_averaged} steps)"
            best_epoch, best_score = len(history), float("nan")
        elif has_validation and stopper.best_state is not None:
            self.model.load_state_dict(stopper.best_state)
            best_epoch, best_score = stopper.best_epoch, stopper.best_score
            selected = f"epoch {best_epoch} (best validation macro-F1)"
        else:
            best_epoch, best_score = len(history), float("nan")
            selected = f"epoch {best_epoch} (last)"
        self.model.eval()
        return FitResult(
            history=history,
            best_epoch=best_epoch,
            best_score=best_score,
            steps=self.step,
            stopped_early=stopped_early,
            seconds=time.perf_counter() - started,
            selected=selected,
            resumed_from_epoch=first_epoch,
        )
