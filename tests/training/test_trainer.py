"""The training loop and the run: schedules, class weights, determinism, resume, early stopping, outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model.batchrenorm import BatchRenorm1d
from model.predict import Predictor
from model.schedule import renorm_limits
from training.calibration import softmax
from training.config import TrainConfig
from training.data import LabeledData
from training.lr_schedule import learning_rate
from training.metrics import classification_scores
from training.outputs import write_run
from training.pipeline import train_model
from training.splits import make_split
from training.synthetic import make_multilab
from training.trainer import Evaluation, Trainer, class_weights, input_statistics

SMALL = {
    "n_top_genes": 60,
    "hidden_sizes": (32, 16),
    "epochs": 4,
    "batch_size": 32,
    "validation_fraction": 0.2,
    "patience": 0,
    "device": "cpu",
}


def synthetic_data(n_cells: int = 480, seed: int = 0, **kwargs) -> LabeledData:
    """A small labeled multi-lab data set (raw counts) as :class:`LabeledData`."""
    adata = make_multilab(n_cells=n_cells, n_genes=100, n_types=4, n_labs=3, seed=seed, **kwargs)
    return LabeledData(
        X=adata.X.tocsr(),
        genes=[str(g) for g in adata.var_names],
        labels=adata.obs["cell_type"].astype(str).to_numpy(),
        batches=adata.obs["batch"].astype(str).to_numpy(),
        cell_ids=adata.obs_names.to_numpy().astype(str),
        input_kind="counts",
    )


@pytest.fixture(scope="module")
def data() -> LabeledData:
    return synthetic_data()


def small_config(**changes) -> TrainConfig:
    return TrainConfig(**(SMALL | changes))


def make_trainer(data: LabeledData, out_dir=None, **changes) -> Trainer:
    config = small_config(**changes)
    split = make_split(data.labels, data.batches, config.holdout_batches, config.validation_fraction, config.seed)
    model_data = data.select_genes(data.genes[: config.n_top_genes])
    return Trainer(config, model_data, sorted(set(data.labels)), split.train, split.validation, out_dir=out_dir)


def _state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_class_weights_are_tempered_inverse_frequencies() -> None:
    labels = np.array([0] * 80 + [1] * 20)
    full = class_weights(labels, 3, power=1.0)
    assert full[2] == 0.0
    assert full[1] / full[0] == pytest.approx(4.0)
    assert np.mean(full[labels]) == pytest.approx(1.0)
    half = class_weights(labels, 3, power=0.5)
    assert half[1] / half[0] == pytest.approx(2.0)
    assert np.allclose(class_weights(labels, 2, power=0.0), 1.0)


def test_class_weights_reach_the_loss(data) -> None:
    weighted = make_trainer(data, class_weighting=True, class_weight_power=1.0)
    plain = make_trainer(data, class_weighting=False)
    counts = np.bincount(weighted.targets[weighted.train_rows])
    expected = counts.sum() / (len(counts) * counts)
    expected *= counts.sum() / (expected * counts).sum()
    assert np.allclose(weighted.loss_weights.numpy(), expected, rtol=1e-6)
    assert torch.all(plain.loss_weights == 1.0)


def test_input_statistics_stream_like_the_dense_computation(data, monkeypatch) -> None:
    monkeypatch.setattr("training.trainer.STATS_CHUNK", 50)
    rows = np.arange(0, data.n_cells, 2)
    mean, std = input_statistics(data, rows)
    dense = data.model_input(rows).astype(np.float64)
    assert np.allclose(mean, dense.mean(0), atol=1e-5)
    assert np.allclose(std, dense.std(0), atol=1e-4)


def test_lr_and_renorm_limits_are_set_from_the_step_inside_the_model(data) -> None:
    schedule = {"warmup_fraction": 0.25, "r_max_final": 3.0, "d_max_final": 5.0,
                "r_ramp_end_fraction": 0.75, "d_ramp_end_fraction": 0.5}
    trainer = make_trainer(data, **{f"brn_{k}": v for k, v in schedule.items()})
    layers = [m for m in trainer.model.modules() if isinstance(m, BatchRenorm1d)]
    assert len(layers) == 2
    total = trainer.total_steps
    assert total == 4 * trainer.steps_per_epoch
    for step in (0, total // 4, total // 2, (5 * total) // 8, total - 1):
        values = trainer.set_step_hyperparameters(step)
        expected = renorm_limits(step, total, **schedule)
        assert (values["r_max"], values["d_max"]) == pytest.approx(expected)
        assert all((layer.r_max, layer.d_max) == pytest.approx(expected) for layer in layers)
        assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(
            learning_rate(step, total, base_lr=trainer.config.lr, warmup_fraction=trainer.config.warmup_fraction,
                          min_lr_ratio=trainer.config.min_lr_ratio)
        )
    # by hand: plain batch norm in the warm-up, half-way up both ramps at 5/8 and 3/8 of the run
    assert renorm_limits(total // 8, total, **schedule) == (1.0, 0.0)
    assert renorm_limits(total // 2, total, **schedule) == pytest.approx((2.0, 5.0))
    assert renorm_limits(total - 1, total, **schedule) == pytest.approx((3.0, 5.0))
    # train_step sets the limits of its own step before the forward pass
    trainer.step = total // 2
    trainer.train_step(trainer.train_rows[:32])
    assert (layers[0].r_max, layers[1].d_max) == pytest.approx((2.0, 5.0))
    assert trainer.step == total // 2 + 1


def test_weight_averaging_ends_with_the_mean_of_the_averaged_steps(data) -> None:
    trainer = make_trainer(data, epochs=3, averaging_start_fraction=0.5, dropout=0.0)
    snapshots: list[dict[str, torch.Tensor]] = []
    step = trainer.train_step

    def recording_step(rows: np.ndarray) -> float:
        loss = step(rows)
        snapshots.append({k: p.detach().clone() for k, p in trainer.model.named_parameters()})
        return loss

    trainer.train_step = recording_step  # type: ignore[method-assign]
    result = trainer.fit()
    start = trainer.average_start
    assert start == (3 * trainer.steps_per_epoch) // 2 and trainer.n_averaged == len(snapshots) - start
    for name, parameter in trainer.model.named_parameters():
        expected = torch.stack([s[name] for s in snapshots[start:]]).mean(0)
        assert torch.allclose(parameter, expected, atol=1e-6), name
    assert result.selected.startswith("average of steps")

    # the norm layers' statistics were recomputed for the averaged weights, over the training cells
    first_linear, first_norm = trainer.model.blocks[0][0], trainer.model.blocks[0][1]
    with torch.no_grad():
        hidden = first_linear(trainer.model.standardize(trainer.inputs(trainer.train_rows)))
    assert torch.allclose(first_norm.running_mean, hidden.mean(0), atol=1e-4)
    assert torch.allclose(first_norm.running_var, hidden.var(0), rtol=1e-3, atol=1e-4)


def test_training_is_deterministic_on_cpu(data) -> None:
    first = make_trainer(data)
    first.fit()
    second = make_trainer(data)
    second.fit()
    _assert_same_state(_state(first), _state(second))


def test_resume_reaches_exactly_the_weights_of_an_uninterrupted_run(data, tmp_path) -> None:
    # weights are averaged from the first epoch on, so the checkpointed average matters too
    changes = {"epochs": 5, "patience": 2, "class_weighting": True, "dropout": 0.3, "averaging_start_fraction": 0.1}
    uninterrupted = make_trainer(data, tmp_path / "a", **changes)
    full = uninterrupted.fit()

    class Interrupt(Exception):
        pass

    def stop_after_two(record: dict) -> None:
        if record["epoch"] == 2:
            raise Interrupt

    interrupted = make_trainer(data, tmp_path / "b", **changes)
    with pytest.raises(Interrupt):
        interrupted.fit(epoch_callback=stop_after_two)
    torch.manual_seed(1234)  # a fresh process would have other RNG states: the checkpoint restores them
    resumed = make_trainer(data, tmp_path / "b", **changes)
    result = resumed.fit(resume=True)
    assert result.resumed_from_epoch == 2
    _assert_same_state(_state(uninterrupted), _state(resumed))
    strip = lambda history: [{k: v for k, v in r.items() if k != "seconds"} for r in history]  # noqa: E731
    assert strip(result.history) == strip(full.history)
    assert result.best_epoch == full.best_epoch


def test_resume_refuses_a_different_config(data, tmp_path) -> None:
    make_trainer(data, tmp_path, epochs=1).fit()
    from training.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="lr"):
        make_trainer(data, tmp_path, epochs=1, lr=0.1).fit(resume=True)


def test_early_stopping_restores_the_best_weights(data) -> None:
    trainer = make_trainer(data, epochs=8, patience=2, weight_averaging=False)
    scripted = iter([0.5, 0.9, 0.7, 0.6, 0.95, 0.95])
    states: list[dict[str, torch.Tensor]] = []

    def fake_evaluate(rows: np.ndarray) -> Evaluation:
        states.append(_state(trainer))
        scores = {"macro_f1": next(scripted), "accuracy": 0.0}
        return Evaluation(logits=np.zeros((0, 4)), targets=np.zeros(0), loss=1.0, scores=scores)

    trainer.evaluate = fake_evaluate  # type: ignore[method-assign]
    result = trainer.fit()
    assert result.stopped_early and len(result.history) == 4
    assert result.best_epoch == 2 and result.best_score == pytest.approx(0.9)
    _assert_same_state(_state(trainer), states[1])


def test_run_writes_the_output_contract_and_the_bundle_reproduces_validation(data, tmp_path) -> None:
    config = small_config(holdout_batches=("lab_2",), epochs=3)
    run = train_model(config, data, datasets=["synthetic.h5ad"], out_dir=tmp_path)
    bundle_dir = write_run(run, tmp_path, {"n_cells": data.n_cells})

    for name in ("config.json", "history.json", "metrics.json", "data_report.json"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "checkpoints" / "latest.pt").is_file()
    assert TrainConfig.from_dict(json.loads((tmp_path / "config.json").read_text())) == config
    history = json.loads((tmp_path / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert set(history[0]) >= {"epoch", "step", "lr", "train_loss", "val_loss", "val_accuracy", "val_macro_f1",
                               "r_max", "d_max", "seconds"}
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for scores in (metrics["validation"], metrics["holdout"]["overall"], metrics["holdout"]["per_batch"]["lab_2"]):
        assert set(scores) >= {"accuracy", "macro_f1", "n_cells", "per_class"}
    assert set(metrics["calibration"]) == {"temperature", "ece_before", "ece_after"}
    reports = {p.name for p in (tmp_path / "reports").iterdir()}
    assert {"validation_confusion.png", "validation_reliability.png", "validation_per_class.csv",
            "holdout_lab_2_confusion.png", "holdout_lab_2_per_class.csv"} <= reports

    predictor = Predictor.load(bundle_dir, device="cpu")
    metadata = predictor.bundle.metadata
    assert set(metadata) >= {"datasets", "label_key", "batch_key", "train_batches", "holdout_batches",
                             "holdout_scores", "validation_scores", "n_cells_train", "trained_at",
                             "celltype_version", "training_config"}
    assert metadata["holdout_batches"] == ["lab_2"] and "lab_2" not in metadata["train_batches"]
    assert metadata["holdout_scores"]["macro_f1"] == pytest.approx(metrics["holdout"]["overall"]["macro_f1"])

    # the bundle, fed the raw counts of all genes, reproduces the validation predictions and probabilities
    validation = data.subset(run.split.validation)
    annotation = predictor.annotate(validation.X, validation.genes, input_kind="counts", threshold=0.0)
    argmax = np.asarray(predictor.classes, dtype=object)[annotation.probabilities.argmax(axis=1)]
    rescored = classification_scores(validation.labels, argmax, predictor.classes, annotation.probabilities)
    assert rescored["macro_f1"] == pytest.approx(metrics["validation"]["macro_f1"])
    assert rescored["ece"] == pytest.approx(metrics["calibration"]["ece_after"], abs=1e-6)
    model_data = data.select_genes(predictor.genes)
    model = run.bundle.build_model()
    with torch.no_grad():
        logits = model(torch.from_numpy(model_data.model_input(run.split.validation))).numpy()
    assert np.allclose(annotation.probabilities, softmax(logits, run.bundle.temperature), atol=1e-5)

    # the Unknown checks: the novelty threshold is the config's quantile of these validation cells' scores
    detector = predictor.bundle.novelty
    assert detector is not None and detector.method == config.novelty_method
    assert detector.quantile == config.novelty_quantile
    assert detector.threshold == pytest.approx(np.quantile(annotation.novelty_score, config.novelty_quantile), rel=1e-4)
    assert metrics["unknown_checks"]["novelty"]["threshold"] == pytest.approx(detector.threshold)
    assert predictor.bundle.min_detected_genes == metrics["unknown_checks"]["min_detected_genes"] >= 1
    assert set(annotation.unknown_reason) <= {"", "unlike_training", "too_few_genes"}


def test_resume_keeps_the_early_stopping_state(data, tmp_path) -> None:
    """Best epoch before the interruption: the resumed run must still stop on time and restore it."""
    script = [0.9, 0.95, 0.5, 0.5, 0.5, 0.5]

    def scripted(trainer: Trainer, states: list) -> None:
        def fake_evaluate(rows: np.ndarray) -> Evaluation:
            states.append(_state(trainer))
            score = script[trainer.step // trainer.steps_per_epoch - 1]
            return Evaluation(logits=np.zeros((0, 4)), targets=np.zeros(0), loss=1.0,
                              scores={"macro_f1": score, "accuracy": score})

        trainer.evaluate = fake_evaluate  # type: ignore[method-assign]

    full_states: list = []
    uninterrupted = make_trainer(data, tmp_path / "a", epochs=6, patience=2, weight_averaging=False)
    scripted(uninterrupted, full_states)
    full = uninterrupted.fit()
    assert (full.best_epoch, len(full.history), full.stopped_early) == (2, 4, True)

    class Interrupt(Exception):
        pass

    def stop_after_three(record: dict) -> None:
        if record["epoch"] == 3:
            raise Interrupt

    interrupted = make_trainer(data, tmp_path / "b", epochs=6, patience=2, weight_averaging=False)
    scripted(interrupted, [])
    with pytest.raises(Interrupt):
        interrupted.fit(epoch_callback=stop_after_three)
    resumed = make_trainer(data, tmp_path / "b", epochs=6, patience=2, weight_averaging=False)
    scripted(resumed, [])
    result = resumed.fit(resume=True)
    assert (result.best_epoch, len(result.history), result.stopped_early) == (2, 4, True)
    _assert_same_state(_state(resumed), full_states[1])
