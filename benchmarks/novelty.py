"""Leave-one-type-out: does the model call a cell type it never saw "Unknown" in a lab it never met?

For every real data set, every cell type ``T`` and every held-out lab ``B`` that has cells of ``T``
(and where ``T`` also occurs in a training lab, so that removing it matters): train ``celltype
train``'s defaults on the other labs *without* the cells of ``T``, then score lab ``B``. Each novelty
scorer of :mod:`model.novelty` is fitted on the training cells and its threshold is a quantile of
the scores of the validation cells of the training labs (lab ``B`` is never looked at). A cell is
Unknown when its calibrated top probability is below the bundle's ``unknown_threshold`` (0.5: the
only rule today, ``max_softmax@0.5``) or its novelty score is above the threshold.

Per fold: the share of ``T``'s cells called Unknown, the share of known-type cells called Unknown,
known-type argmax accuracy, and the AUROC of the score separating ``T`` from the known types. The
summary averages per left-out type (over its held-out labs), then over types; the default chosen is
the scorer and quantile with the most removed-type Unknown among those keeping known-type Unknown
≤ 5% on average.

    python -m benchmarks.novelty --dataset all --seeds 0 [--json out.json] [--doc docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.docs_section import replace_section
from model.novelty import (
    DEFAULT_METHOD,
    DEFAULT_QUANTILE,
    HIDDEN,
    INPUT,
    LOGITS,
    METHODS,
    NoveltyDetector,
    novelty_features,
)

DATASETS = ("cellbench", "muscat_kang", "symphony_pbmc", "scannotate_pbmc", "scclassify_pancreas")
QUANTILES = (0.95, 0.98, 0.99, 0.995, 0.999)
KNOWN_UNKNOWN_GOAL = 0.05
REMOVED_UNKNOWN_GOAL = 0.80
SECTION = ("<!-- novelty:start -->", "<!-- novelty:end -->")
DEFAULT_RULE = f"{DEFAULT_METHOD}@{DEFAULT_QUANTILE}"
"""The product's default novelty rule (:mod:`model.novelty`), as ``METHOD@QUANTILE``."""
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class FoldOutputs:
    """A trained fold's model outputs for its training, validation and held-out cells.

    Attributes:
        classes: the model's classes.
        temperature: the fitted softmax temperature.
        unknown_threshold: the bundle's probability threshold.
        inputs, hidden, logits: per part (``"train"``, ``"validation"``, ``"holdout"``), the
            standardized model input, :func:`model.novelty.hidden_features` and the logits (eval
            mode; :func:`model.novelty.novelty_features`).
        labels: per part, the true cell type of each cell.
        batches: the held-out cells' batch.
    """

    classes: list[str]
    temperature: float
    unknown_threshold: float
    inputs: dict[str, np.ndarray]
    hidden: dict[str, np.ndarray]
    logits: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    batches: np.ndarray

    def targets(self, part: str) -> np.ndarray:
        """Class index of each cell of ``part`` (-1 for types the model does not know)."""
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index.get(label, -1) for label in self.labels[part]], dtype=np.int64)


def model_outputs(run: Any, data: Any) -> FoldOutputs:
    """Model input, hidden features and logits of a :class:`training.trainer.TrainingRun`'s cells, from its bundle."""
    import torch

    bundle = run.bundle
    model = bundle.build_model("cpu").eval()
    model_data = data.select_genes(bundle.genes)
    labels = np.asarray(data.labels).astype(str)
    parts = {"train": run.split.train, "validation": run.split.validation, "holdout": run.split.holdout}
    standardized, hidden, logits = {}, {}, {}
    with torch.no_grad():
        for part, rows in parts.items():
            features = novelty_features(model, torch.from_numpy(model_data.model_input(rows)))
            standardized[part] = features[INPUT].numpy().astype(np.float64)
            hidden[part] = features[HIDDEN].numpy().astype(np.float64)
            logits[part] = features[LOGITS].numpy().astype(np.float64)
    return FoldOutputs(
        classes=list(bundle.classes),
        temperature=float(bundle.temperature),
        unknown_threshold=float(bundle.unknown_threshold),
        inputs=standardized,
        hidden=hidden,
        logits=logits,
        labels={part: labels[rows] for part, rows in parts.items()},
        batches=np.asarray(data.batches).astype(str)[run.split.holdout],
    )


def fit_detector(method: str, fold: FoldOutputs) -> NoveltyDetector:
    """``method`` fitted on the fold's training cells (logit scorers at the fitted temperature)."""
    params = {"temperature": fold.temperature} if "energy" in method or "max_softmax" in method else {}
    return NoveltyDetector.fit(method, detector_input(None, fold, "train"), fold.targets("train"), len(fold.classes),
                               **params)


def detector_input(detector: NoveltyDetector | None, fold: FoldOutputs, part: str) -> dict[str, np.ndarray]:
    """The features of the cells of ``part`` as :func:`model.novelty.novelty_features` gives them (any detector)."""
    return {INPUT: fold.inputs[part], HIDDEN: fold.hidden[part], LOGITS: fold.logits[part]}


def top_probability(fold: FoldOutputs, part: str) -> np.ndarray:
    """Calibrated top probability of each cell of ``part``."""
    scaled = fold.logits[part] / fold.temperature
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    probabilities = np.exp(scaled)
    return probabilities.max(axis=1) / probabilities.sum(axis=1)


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability that a positive scores above a negative (ties count half); NaN when a side is empty."""
    from scipy.stats import rankdata

    if not len(positive) or not len(negative):
        return float("nan")
    ranks = rankdata(np.concatenate([positive, negative]))
    n_pos = len(positive)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * len(negative)))


def score_fold(fold: FoldOutputs, removed: str, quantiles: tuple[float, ...]) -> dict[str, Any]:
    """Every scorer and quantile on one fold: Unknown shares of removed and known cells, AUROC, accuracy."""
    truth = fold.labels["holdout"]
    targets = fold.targets("holdout")
    is_removed, is_known = truth == removed, targets >= 0
    confidence = top_probability(fold, "holdout")
    low_confidence = confidence < fold.unknown_threshold
    predicted = fold.logits["holdout"].argmax(axis=1)
    result: dict[str, Any] = {
        "n_removed": int(is_removed.sum()),
        "n_known": int(is_known.sum()),
        "known_accuracy": float(np.mean(predicted[is_known] == targets[is_known])) if is_known.any() else float("nan"),
        "rules": {
            "max_softmax@0.5": {
                "removed_unknown": float(low_confidence[is_removed].mean()),
                "known_unknown": float(low_confidence[is_known].mean()),
            }
        },
        "auroc": {},
    }
    for method in METHODS:
        detector = fit_detector(method, fold)
        scores = detector.score(detector_input(detector, fold, "holdout"))
        result["auroc"][method] = auroc(scores[is_removed], scores[is_known])
        for quantile in quantiles:
            detector.calibrate(detector_input(detector, fold, "validation"), quantile)
            unknown = low_confidence | (scores > detector.threshold)
            result["rules"][f"{method}@{quantile}"] = {
                "removed_unknown": float(unknown[is_removed].mean()),
                "known_unknown": float(unknown[is_known].mean()),
            }
    return result


def leave_one_type_out(path: Path, seed: int, assignments: list[str], quantiles: tuple[float, ...], log: Any) -> list[dict[str, Any]]:
    """Every (left-out type, held-out lab) fold of one data set."""
    from training.config import resolve_config
    from training.data import load_labeled
    from training.pipeline import train_model

    data, _ = load_labeled(path, label_key="cell_type", batch_key="batch")
    labels = np.asarray(data.labels).astype(str)
    batches = np.asarray(data.batches).astype(str)
    folds = []
    for removed in data.classes:
        for batch in data.batch_names:
            in_batch, elsewhere = labels[batches == batch], labels[batches != batch]
            if removed not in in_batch or removed not in elsewhere or len(set(elsewhere) - {removed}) < 2:
                continue
            fold_data = data.subset((batches == batch) | (labels != removed))
            config = resolve_config(None, assignments, {"holdout_batches": (batch,), "seed": seed, "device": "cpu"})
            started = time.perf_counter()
            run = train_model(config, fold_data)
            result = score_fold(model_outputs(run, fold_data), removed, quantiles)
            result.update(dataset=path.stem, removed=removed, holdout=batch, seed=seed,
                          seconds=time.perf_counter() - started)
            folds.append(result)
            today = result["rules"]["max_softmax@0.5"]
            print(f"  {path.stem} without {removed!r}, held-out {batch}: today {today['removed_unknown']:.2f}/"
                  f"{today['known_unknown']:.2f}, mahalanobis AUROC {result['auroc']['mahalanobis']:.3f} "
                  f"({result['seconds']:.1f} s)", file=log, flush=True)
    return folds


def per_type_means(folds: list[dict[str, Any]], rule: str) -> list[dict[str, Any]]:
    """One row per (data set, left-out type): the rule's shares and the accuracy, averaged over its held-out labs."""
    rows = []
    for key in sorted({(f["dataset"], f["removed"]) for f in folds}):
        chosen = [f for f in folds if (f["dataset"], f["removed"]) == key]
        rows.append({
            "dataset": key[0],
            "removed": key[1],
            "removed_unknown": float(np.mean([f["rules"][rule]["removed_unknown"] for f in chosen])),
            "known_unknown": float(np.mean([f["rules"][rule]["known_unknown"] for f in chosen])),
            "known_accuracy": float(np.mean([f["known_accuracy"] for f in chosen])),
            "folds": len(chosen),
        })
    return rows


def summarize(folds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per rule: per-set and overall means (over left-out types); the default the numbers support."""
    rules = list(folds[0]["rules"])
    datasets = list(dict.fromkeys(f["dataset"] for f in folds))
    table: dict[str, Any] = {}
    for rule in rules:
        rows = per_type_means(folds, rule)
        per_set = {
            d: {k: float(np.mean([r[k] for r in rows if r["dataset"] == d])) for k in ("removed_unknown", "known_unknown")}
            for d in datasets
        }
        table[rule] = {
            "removed_unknown": float(np.mean([r["removed_unknown"] for r in rows])),
            "known_unknown": float(np.mean([r["known_unknown"] for r in rows])),
            "per_set": per_set,
        }
    auroc_table = {
        m: {d: float(np.nanmean([f["auroc"][m] for f in folds if f["dataset"] == d])) for d in datasets}
        for m in folds[0]["auroc"]
    }
    admissible = [r for r in rules if table[r]["known_unknown"] <= KNOWN_UNKNOWN_GOAL]
    default = max(admissible, key=lambda r: table[r]["removed_unknown"]) if admissible else None
    return {"rules": table, "auroc": auroc_table, "default": default, "datasets": datasets,
            "per_type": per_type_means(folds, default or "max_softmax@0.5")}


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def format_section(summary: dict[str, Any], folds: list[dict[str, Any]], seeds: list[int], command: str) -> str:
    """The ``novelty`` section of docs/benchmarks.md, every figure from ``summary``/``folds``."""
    rules, datasets, default = summary["rules"], summary["datasets"], summary["default"]
    lines = [
        "## Unseen cell types: leave-one-type-out on held-out labs",
        "",
        f"`{command}` ({len(folds)} folds: every cell type left out of training in turn, each held-out lab that has it;"
        f" seeds {seeds}; default `celltype train` config). Unknown = calibrated top probability < 0.5 (today's only"
        " rule) **or** novelty score above a threshold set at a quantile of the validation cells of the *training*"
        " labs. Shares are means over left-out types (each averaged over its held-out labs).",
        "",
        "### Removed type called Unknown / known types called Unknown (mean over types)",
        "",
        "| rule | all sets | " + " | ".join(datasets) + " |",
        "|---|---|" + "---|" * len(datasets),
    ]
    for rule, row in rules.items():
        cells = [f"{_pct(row['per_set'][d]['removed_unknown'])} / {_pct(row['per_set'][d]['known_unknown'])}" for d in datasets]
        mark = (" (best ≤ 5%)" if rule == default else "") + (" (product default)" if rule == DEFAULT_RULE else "")
        lines.append(f"| `{rule}`{mark} | **{_pct(row['removed_unknown'])} / {_pct(row['known_unknown'])}** | "
                     + " | ".join(cells) + " |")
    lines += ["", "### AUROC of the score, removed type vs known types (mean over folds)", "",
              "| scorer | " + " | ".join(datasets) + " |", "|---|" + "---|" * len(datasets)]
    for method, row in summary["auroc"].items():
        lines.append(f"| {method} | " + " | ".join(f"{row[d]:.3f}" for d in datasets) + " |")
    lines += ["", f"### Per left-out type with the default rule `{default or 'max_softmax@0.5'}`", "",
              "| data set | left-out type | held-out labs | removed → Unknown | known → Unknown | known accuracy |",
              "|---|---|---|---|---|---|"]
    for row in summary["per_type"]:
        lines.append(f"| {row['dataset']} | {row['removed']} | {row['folds']} | {_pct(row['removed_unknown'])} | "
                     f"{_pct(row['known_unknown'])} | {_pct(row['known_accuracy'])} |")
    lines += ["", "### Against the goals (≥ 80% of the unseen type Unknown, ≤ 5% of known types Unknown)", ""]
    today = rules["max_softmax@0.5"]
    lines.append(f"- Today (`max_softmax@0.5`): {_pct(today['removed_unknown'])} of unseen-type cells Unknown, "
                 f"{_pct(today['known_unknown'])} of known-type cells.")
    if DEFAULT_RULE in rules:
        product = rules[DEFAULT_RULE]
        lines.append(f"- Product default `{DEFAULT_RULE}` (`model.novelty.DEFAULT_METHOD`/`DEFAULT_QUANTILE`): "
                     f"{_pct(product['removed_unknown'])} / {_pct(product['known_unknown'])}.")
    if default is None:
        lines.append(f"- No rule keeps known-type Unknown ≤ {_pct(KNOWN_UNKNOWN_GOAL)}; no default is supported.")
    else:
        chosen = rules[default]
        met = chosen["removed_unknown"] >= REMOVED_UNKNOWN_GOAL
        lines.append(f"- Best rule `{default}` (most unseen-type Unknown with known-type Unknown ≤ "
                     f"{_pct(KNOWN_UNKNOWN_GOAL)}): {_pct(chosen['removed_unknown'])} / {_pct(chosen['known_unknown'])}"
                     f" — the {_pct(REMOVED_UNKNOWN_GOAL)} goal is {'met' if met else '**not met**'}.")
        short = [d for d in datasets if chosen["per_set"][d]["removed_unknown"] < REMOVED_UNKNOWN_GOAL]
        if short:
            lines.append("- Sets below 80% with it: " + ", ".join(
                f"{d} {_pct(chosen['per_set'][d]['removed_unknown'])}" for d in short) + ".")
        over = [d for d in datasets if chosen["per_set"][d]["known_unknown"] > KNOWN_UNKNOWN_GOAL]
        if over:
            lines.append("- Sets above 5% known-type Unknown with it: " + ", ".join(
                f"{d} {_pct(chosen['per_set'][d]['known_unknown'])}" for d in over) + ".")
    best = max(rules, key=lambda r: rules[r]["removed_unknown"] - rules[r]["known_unknown"])
    lines.append(f"- Largest gap (removed − known Unknown): `{best}` {_pct(rules[best]['removed_unknown'])} / "
                 f"{_pct(rules[best]['known_unknown'])}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the study, print the summary, write JSON and the docs section."""
    from benchmarks.data_sets import DEFAULT_DATA_DIR, data_directory

    parser = argparse.ArgumentParser(prog="python -m benchmarks.novelty", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", nargs="+", default=["all"], help=f"some of {', '.join(DATASETS)}, or 'all'")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default 0)")
    parser.add_argument("--quantiles", type=float, nargs="+", default=list(QUANTILES),
                        help="validation quantiles tried as thresholds")
    parser.add_argument("--set", action="append", default=[], dest="assignments", metavar="KEY=VALUE",
                        help="override a training config key (repeatable)")
    parser.add_argument("--json", type=Path, help="write every fold's result here")
    parser.add_argument("--from-json", type=Path, help="only rewrite the report from an earlier --json")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md", help="report file")
    parser.add_argument("--no-doc", action="store_true", help="do not touch the report file")
    parser.add_argument("--data-dir", help=f"folder of the .h5ad files (default {DEFAULT_DATA_DIR})")
    args = parser.parse_args(argv)

    names = list(DATASETS) if args.dataset == ["all"] else args.dataset
    unknown = sorted(set(names) - set(DATASETS))
    if unknown:
        print(f"benchmarks.novelty: error: unknown data set(s) {', '.join(unknown)}; choose from {', '.join(DATASETS)}",
              file=sys.stderr)
        return 2
    command = "python -m benchmarks.novelty --dataset " + " ".join(args.dataset) + " --seeds " + " ".join(map(str, args.seeds))
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        folds, seeds, command = saved["folds"], saved["seeds"], saved["command"]
    else:
        directory = data_directory(args.data_dir)
        missing = [n for n in names if not (directory / f"{n}.h5ad").is_file()]
        if missing:
            print(f"benchmarks.novelty: error: {', '.join(missing)} not in {directory} (set --data-dir)", file=sys.stderr)
            return 2
        import torch

        torch.set_num_threads(1)
        started = time.perf_counter()
        folds = [fold for name in names for seed in args.seeds for fold in
                 leave_one_type_out(directory / f"{name}.h5ad", seed, args.assignments, tuple(args.quantiles), sys.stderr)]
        seeds = args.seeds
        print(f"{len(folds)} folds in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        if args.json:
            args.json.write_text(json.dumps({"command": command, "seeds": seeds, "folds": folds}, indent=1) + "\n")
    if not folds:
        print("benchmarks.novelty: error: no fold to run (no type occurs in two labs)", file=sys.stderr)
        return 2
    summary = summarize(folds)
    section = format_section(summary, folds, seeds, command)
    print(section)
    if not args.no_doc:
        replace_section(args.doc, *SECTION, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
