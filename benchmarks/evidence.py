"""The evidence report: where Batch Renormalization helps, where it does not, and why.

Every measurement is one *job* (one leave-one-batch-out fold of one setting, or one synthetic run),
run in a priority order and appended to a JSON file as soon as it finishes, so an interrupted run
keeps its results and a rerun skips what is done. :func:`write_report` turns the JSON into the
``<!-- evidence:start -->`` section of ``docs/benchmarks.md`` and PNG plots in ``docs/img/``.

Jobs, in priority order (``full``):

1. ``lobo``: leave-one-batch-out on every real multi-batch set, our classifier with each norm layer
   (batchrenorm, batchnorm, layernorm, none) and mini-batch regime (shuffled, lab-homogeneous), batch
   size 64, seed 0. Per fold: held-out accuracy and macro-F1 (cell types seen in training), the
   eval-mode macro-F1 on the model's own training cells, and for batch-norm models the held-out
   scores after AdaBN adaptation on the held-out batch (statistics only, and statistics + input
   standardization).
2. ``synthetic``: the generator with lab-effect strength 0, 0.5, 1.0 (+ a confounded case, one type in
   one lab only), 3 labs for training and an unseen 4th lab.
3. ``augment``: batchrenorm with lab-effect augmentation (per lab), synthetic and real.
4. ``peer``: logistic regression and CellTypist 1.7.1 on the same folds (smallest gene panels first).
5. ``batch_size``: mini-batches of 4, 16, 64, 256 (muscat_kang).
6. seeds 1 and 2 of (1), (3) and (4).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DATASETS = ("cellbench", "muscat_kang", "symphony_pbmc", "scannotate_pbmc", "scclassify_pancreas")
NORMS = ("batchrenorm", "batchnorm", "layernorm", "none")
SAMPLERS = ("shuffled", "lab_homogeneous")
BATCH_SIZES = (4, 16, 64, 256)
LAB_EFFECTS = (0.0, 0.5, 1.0)
BATCH_NORMS = ("batchrenorm", "batchnorm")


@dataclass(frozen=True)
class Plan:
    """What to run.

    Attributes:
        datasets: real data sets (file stems in the data directory).
        seeds: seeds of the main grid.
        overrides: ``--set`` style config overrides applied to every run of our classifier.
        batch_size_datasets: data sets of the mini-batch size sweep.
        batch_sizes: the sweep's sizes.
        synthetic_cells: cells of each synthetic data set.
        lab_effects: synthetic lab-effect strengths.
        celltypist: run the CellTypist peer.
        celltypist_env: its ``pip --target`` folder.
        norms, samplers: the main grid.
    """

    datasets: tuple[str, ...] = DATASETS
    seeds: tuple[int, ...] = (0, 1, 2)
    overrides: tuple[str, ...] = ()
    batch_size_datasets: tuple[str, ...] = ("muscat_kang",)
    batch_sizes: tuple[int, ...] = BATCH_SIZES
    synthetic_cells: int = 2400
    lab_effects: tuple[float, ...] = LAB_EFFECTS
    celltypist: bool = True
    celltypist_env: Path = Path("/tmp/celltypist_env")
    norms: tuple[str, ...] = NORMS
    samplers: tuple[str, ...] = SAMPLERS
    augment: dict[str, str] = field(default_factory=lambda: {"augment_mode": "per_lab"})


def quick_plan(celltypist: bool = False) -> Plan:
    """Minutes instead of an hour: one small data set, BRN vs BN, one seed, short training."""
    return Plan(
        datasets=("scclassify_pancreas",),
        seeds=(0,),
        overrides=("epochs=4", "hidden_sizes=64,32", "n_top_genes=200"),
        batch_size_datasets=(),
        synthetic_cells=800,
        lab_effects=(1.0,),
        celltypist=celltypist,
        norms=("batchrenorm", "batchnorm"),
        samplers=("lab_homogeneous",),
    )


# -- data -----------------------------------------------------------------------------------------


def _synthetic_data(cells: int, lab_effect: float, confounded: bool, seed: int) -> Any:
    from training.data import LabeledData
    from training.synthetic import make_multilab

    adata = make_multilab(
        n_cells=cells, n_genes=400, n_types=5, n_labs=4, lab_effect=lab_effect, confounded=confounded, seed=seed
    )
    return LabeledData(
        X=adata.X.tocsr().astype(np.float32),
        genes=[str(g) for g in adata.var_names],
        labels=np.asarray(adata.obs["cell_type"]).astype(str),
        batches=np.asarray(adata.obs["batch"]).astype(str),
        cell_ids=np.asarray(adata.obs_names).astype(str),
        input_kind="counts",
        sources=["synthetic"],
    )


class DataCache:
    """Loads each real data set once."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._data: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        """The :class:`training.data.LabeledData` of data set ``name``."""
        if name not in self._data:
            from training.data import load_labeled

            self._data[name], _ = load_labeled(self.directory / f"{name}.h5ad", label_key="cell_type", batch_key="batch")
        return self._data[name]


# -- one measurement ------------------------------------------------------------------------------


def _scores(truth: np.ndarray, predicted: np.ndarray, classes: list[str]) -> dict[str, float]:
    from training.metrics import classification_scores

    scores = classification_scores(truth, predicted, classes)
    return {"accuracy": float(scores["accuracy"]), "macro_f1": float(scores["macro_f1"]), "n_scored": int(scores["n_scored"])}


def _predict(bundle: Any, inputs: np.ndarray) -> np.ndarray:
    import torch

    model = bundle.build_model("cpu")
    with torch.no_grad():
        logits = model(torch.from_numpy(inputs)).numpy()
    return np.asarray(bundle.classes, dtype=object)[logits.argmax(axis=1)]


def train_and_score(data: Any, holdout: str, seed: int, overrides: list[str], adapt: bool) -> dict[str, Any]:
    """Train on every batch but ``holdout``; score the held-out batch, own training cells and AdaBN."""
    from model.adapt import adapt_bundle
    from training.config import resolve_config
    from training.pipeline import train_model

    config = resolve_config(None, overrides, {"holdout_batches": (holdout,), "seed": seed, "device": "cpu"})
    started = time.perf_counter()
    run = train_model(config, data)
    seconds = time.perf_counter() - started
    model_data = data.select_genes(run.bundle.genes)
    truth = np.asarray(data.labels).astype(str)
    held = np.flatnonzero(np.asarray(data.batches).astype(str) == holdout)
    held_inputs = model_data.model_input(held)
    result = {
        "holdout": _scores(truth[held], _predict(run.bundle, held_inputs), run.bundle.classes),
        "train_eval": _scores(
            truth[run.split.train], _predict(run.bundle, model_data.model_input(run.split.train)), run.bundle.classes
        ),
        "seconds": seconds,
        "epochs_run": run.metrics["training"]["epochs_run"],
    }
    if adapt and run.bundle.config.norm in BATCH_NORMS:
        for name, restandardize in (("adabn", False), ("adabn_inputs", True)):
            adapted = adapt_bundle(run.bundle, held_inputs, target=holdout, restandardize_inputs=restandardize)
            result[name] = _scores(truth[held], _predict(adapted, held_inputs), run.bundle.classes)
    return result


# -- the job list ---------------------------------------------------------------------------------


def _variant(norm: str, sampler: str, batch_size: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"norm": norm, "sampler": sampler, "batch_size": str(batch_size), **(extra or {})}


def jobs(plan: Plan, cache: DataCache) -> Iterator[dict[str, Any]]:
    """Every job of ``plan`` in priority order: ``{"key", "kind", ...}``."""
    first, rest = plan.seeds[:1], plan.seeds[1:]

    def lobo(seeds: tuple[int, ...], datasets: tuple[str, ...], variants: list[dict[str, str]], group: str):
        for seed in seeds:
            for name in datasets:
                for variant in variants:
                    for batch in cache.get(name).batch_names:
                        key = f"{group}|{name}|{batch}|{seed}|" + ",".join(f"{k}={v}" for k, v in sorted(variant.items()))
                        yield {"key": key, "kind": "lobo", "group": group, "dataset": name, "holdout": batch,
                               "seed": seed, "variant": variant}

    def synthetic(seeds: tuple[int, ...], variants: list[dict[str, str]], group: str):
        cases = [(effect, False) for effect in plan.lab_effects] + [(max(plan.lab_effects), True)]
        for seed in seeds:
            for effect, confounded in cases:
                for variant in variants:
                    key = f"{group}|{effect}|{confounded}|{seed}|" + ",".join(f"{k}={v}" for k, v in sorted(variant.items()))
                    yield {"key": key, "kind": "synthetic", "group": group, "lab_effect": effect,
                           "confounded": confounded, "seed": seed, "variant": variant}

    grid = [_variant(n, s, 64) for s in plan.samplers for n in plan.norms]
    augmented = [_variant("batchrenorm", s, 64, plan.augment) for s in plan.samplers]
    sizes = [_variant(n, s, b) for b in plan.batch_sizes if b != 64 for s in plan.samplers for n in BATCH_NORMS]
    yield from lobo(first, plan.datasets, grid, "main")
    yield from synthetic(first, grid, "main")
    yield from synthetic(first, augmented, "augment")
    yield from lobo(first, plan.datasets, augmented, "augment")
    for name in sorted(plan.datasets, key=lambda n: cache.get(n).n_genes):
        for batch in cache.get(name).batch_names:
            yield {"key": f"peer|{name}|{batch}", "kind": "peer", "dataset": name, "holdout": batch}
    yield from lobo(first, plan.batch_size_datasets, sizes, "batch_size")
    yield from lobo(rest, plan.datasets, grid, "main")
    yield from synthetic(rest, grid, "main")
    yield from lobo(rest, plan.datasets, augmented, "augment")
    yield from synthetic(rest, augmented, "augment")


def _overrides(plan: Plan, variant: dict[str, str]) -> list[str]:
    return [*plan.overrides, *(f"{k}={v}" for k, v in variant.items())]


def run_peers(plan: Plan, cache: DataCache, job: dict[str, Any]) -> dict[str, Any]:
    """Logistic regression and (when enabled) CellTypist on one fold."""
    from benchmarks.peers import celltypist_folds, logistic_regression_fold

    data = cache.get(job["dataset"])
    labels = np.asarray(data.labels).astype(str)
    batches = np.asarray(data.batches).astype(str)
    train = np.flatnonzero(batches != job["holdout"])
    test = np.flatnonzero(batches == job["holdout"])
    classes = sorted(set(labels[train].tolist()))
    train_X, test_X = data.model_input(train), data.model_input(test)
    result: dict[str, Any] = {}
    started = time.perf_counter()
    predicted = logistic_regression_fold(train_X, labels[train], test_X)
    result["logreg"] = _scores(labels[test], predicted, classes) | {"seconds": time.perf_counter() - started}
    if plan.celltypist:
        started = time.perf_counter()
        fold = {"key": "f", "genes": data.genes, "train_X": train_X, "train_y": labels[train], "test_X": test_X}
        predicted = np.asarray(celltypist_folds([fold], plan.celltypist_env)["f"])
        result["celltypist"] = _scores(labels[test], predicted, classes) | {"seconds": time.perf_counter() - started}
    return result


def run_job(plan: Plan, cache: DataCache, job: dict[str, Any]) -> dict[str, Any]:
    """Run one job and return its result (JSON-ready)."""
    if job["kind"] == "peer":
        return run_peers(plan, cache, job)
    overrides = _overrides(plan, job["variant"])
    if job["kind"] == "lobo":
        return train_and_score(cache.get(job["dataset"]), job["holdout"], job["seed"], overrides, adapt=True)
    cells = plan.synthetic_cells
    data = _synthetic_data(cells, job["lab_effect"], job["confounded"], job["seed"])
    return train_and_score(data, "lab_3", job["seed"], overrides, adapt=True)


def run_plan(plan: Plan, results_path: Path, data_dir: Path, log: Any, budget_s: float | None = None) -> dict[str, Any]:
    """Run every job of ``plan`` not yet in ``results_path``, saving after each; stop after ``budget_s``."""
    results_path.parent.mkdir(parents=True, exist_ok=True)
    state = json.loads(results_path.read_text()) if results_path.is_file() else {"jobs": {}}
    cache = DataCache(data_dir)
    started = time.perf_counter()
    for job in jobs(plan, cache):
        if job["key"] in state["jobs"]:
            continue
        if budget_s is not None and time.perf_counter() - started > budget_s:
            print(f"evidence: time budget of {budget_s:.0f} s spent; stopping (rerun to continue)", file=log, flush=True)
            break
        job_started = time.perf_counter()
        try:
            result = run_job(plan, cache, job)
        except Exception as exc:  # one failed measurement must not lose the others; it is reported
            result = {"error": f"{type(exc).__name__}: {exc}"}
        state["jobs"][job["key"]] = {**job, "result": result}
        tmp = results_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1, default=float))
        tmp.replace(results_path)
        print(f"evidence: {job['key']} ({time.perf_counter() - job_started:.1f} s) {_brief(result)}", file=log, flush=True)
    return state


def _brief(result: dict[str, Any]) -> str:
    if "error" in result:
        return result["error"]
    parts = []
    for name in ("holdout", "adabn", "logreg", "celltypist"):
        if name in result:
            parts.append(f"{name} F1 {result[name]['macro_f1']:.3f}")
    return ", ".join(parts)
