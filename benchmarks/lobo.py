"""Leave-one-lab-out (LOBO): ``celltype train``'s defaults against CellTypist and logistic regression.

For each data set and each of its labs (batches): train on the other labs and score the held-out lab.
The peers run in the same run on the same folds and cells, every time (no figure is typed in):

- ours: ``celltype train``'s defaults (plus ``--set`` overrides), once per seed;
- logistic regression (:mod:`benchmarks.peers.logreg`) and CellTypist 1.7.1 trained with
  ``celltypist.train`` on the fold's training cells (:mod:`benchmarks.peers.celltypist`; installed into
  its own folder on first use). Both are deterministic, so they run once per fold. They train on every
  cell of the training labs; ours keeps 10% of them for validation (early stopping, calibration).

Scores are over the held-out cells whose type was seen in training: macro-F1 (primary) and accuracy
of argmax labels (no "Unknown"). A fold is a win/tie/loss for us against a peer when our mean over
seeds is above / within 0.5 pp of / below the peer's macro-F1. Calibration on the held-out lab: ECE of
the top probability before and after temperature scaling, and the share of known-type cells called
Unknown (top probability < 0.5; and with the novelty detector of ``--novelty`` as well).

    python -m benchmarks.lobo --dataset all --seeds 0 1 2 [--no-celltypist] [--json out.json]

The report replaces the ``<!-- lobo:start -->`` section of ``--doc`` (default docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.data_sets import DATA_DIR_ENV, DEFAULT_DATA_DIR, data_directory
from benchmarks.docs_section import replace_section

DATASETS = ("cellbench", "muscat_kang", "symphony_pbmc", "scannotate_pbmc", "scclassify_pancreas")
"""The real data sets (``<name>.h5ad`` in the data folder)."""
PEERS = ("logreg", "celltypist")
TIE_PP = 0.5
"""Differences within this many percentage points of macro-F1 are ties."""
GOAL_PP = 1.0
"""The accuracy goal: mean held-out macro-F1 over the sets at least this many points above CellTypist."""
SECTION = ("<!-- lobo:start -->", "<!-- lobo:end -->")

ROOT = Path(__file__).resolve().parents[1]


def _scores(truth: np.ndarray, predicted: np.ndarray, classes: list[str]) -> dict[str, float]:
    from training.metrics import classification_scores

    scores = classification_scores(truth, predicted, classes)
    return {"macro_f1": scores["macro_f1"], "accuracy": scores["accuracy"], "n_scored": scores["n_scored"]}


def run_ours(data: Any, batch: str, seed: int, assignments: list[str], novelty: str) -> dict[str, Any]:
    """Train on every lab but ``batch`` with the defaults (+ overrides); score, calibrate and flag ``batch``."""
    from benchmarks.novelty import detector_input, fit_detector, model_outputs, top_probability
    from training.config import resolve_config
    from training.metrics import expected_calibration_error
    from training.pipeline import train_model

    config = resolve_config(None, assignments, {"holdout_batches": (batch,), "seed": seed, "device": "cpu"})
    started = time.perf_counter()
    run = train_model(config, data)
    seconds = time.perf_counter() - started
    fold = model_outputs(run, data)
    truth, targets = fold.labels["holdout"], fold.targets("holdout")
    known = targets >= 0
    predicted = np.asarray(fold.classes, dtype=object)[fold.logits["holdout"].argmax(axis=1)]
    correct = (fold.logits["holdout"].argmax(axis=1) == targets)[known]
    raw = fold.logits["holdout"] - fold.logits["holdout"].max(axis=1, keepdims=True)
    raw_confidence = (np.exp(raw).max(axis=1) / np.exp(raw).sum(axis=1))[known]
    confidence = top_probability(fold, "holdout")
    method, quantile = novelty.split("@")
    detector = fit_detector(method, fold)
    detector.calibrate(detector_input(detector, fold, "validation"), float(quantile))
    unknown = (confidence < fold.unknown_threshold) | detector.is_novel(detector_input(detector, fold, "holdout"))
    unseen = ~known
    return {
        "batch": batch,
        "seed": seed,
        **_scores(truth, predicted, fold.classes),
        "ece_before": expected_calibration_error(raw_confidence, correct),
        "ece_after": expected_calibration_error(confidence[known], correct),
        "temperature": fold.temperature,
        "known_unknown_today": float(np.mean(confidence[known] < fold.unknown_threshold)),
        "known_unknown_novelty": float(np.mean(unknown[known])),
        "n_unseen": int(unseen.sum()),
        "unseen_unknown_today": float(np.mean(confidence[unseen] < fold.unknown_threshold)) if unseen.any() else None,
        "unseen_unknown_novelty": float(np.mean(unknown[unseen])) if unseen.any() else None,
        "epochs_run": run.metrics["training"]["epochs_run"],
        "seconds": seconds,
    }


def run_peers(data: Any, celltypist: bool, celltypist_dir: Path | None) -> dict[str, dict[str, Any]]:
    """Logistic regression (and CellTypist) on every LOBO fold of ``data``: ``{batch: {peer: scores}}``."""
    from benchmarks.peers import celltypist_folds, logistic_regression_fold

    labels = np.asarray(data.labels).astype(str)
    batches = np.asarray(data.batches).astype(str)
    results: dict[str, dict[str, Any]] = {}
    folds = []
    for batch in data.batch_names:
        train, test = np.flatnonzero(batches != batch), np.flatnonzero(batches == batch)
        classes = sorted(set(labels[train].tolist()))
        train_X, test_X = data.model_input(train), data.model_input(test)
        started = time.perf_counter()
        predicted = logistic_regression_fold(train_X, labels[train], test_X)
        results[batch] = {"logreg": _scores(labels[test], predicted, classes) | {"seconds": time.perf_counter() - started}}
        folds.append({"key": batch, "genes": data.genes, "train_X": train_X, "train_y": labels[train], "test_X": test_X,
                      "truth": labels[test], "classes": classes})
    if celltypist:
        started = time.perf_counter()
        predicted_by_fold = celltypist_folds(folds, celltypist_dir)
        seconds = (time.perf_counter() - started) / len(folds)
        for fold in folds:
            predicted = np.asarray(predicted_by_fold[fold["key"]])
            results[fold["key"]]["celltypist"] = _scores(fold["truth"], predicted, fold["classes"]) | {"seconds": seconds}
    return results


def evaluate_dataset(
    path: Path, seeds: list[int], assignments: list[str], novelty: str, celltypist: bool,
    celltypist_dir: Path | None, log: Any,
) -> dict[str, Any]:
    """All LOBO folds of one data set: ours for every seed, the peers once per fold."""
    from training.data import load_labeled

    data, _ = load_labeled(path, label_key="cell_type", batch_key="batch")
    started = time.perf_counter()
    peers = run_peers(data, celltypist, celltypist_dir)
    print(f"  {path.stem} peers: {time.perf_counter() - started:.0f} s", file=log, flush=True)
    ours = []
    for seed in seeds:
        for batch in data.batch_names:
            fold = run_ours(data, batch, seed, assignments, novelty)
            ours.append(fold)
            print(f"  {path.stem} seed {seed} held-out {batch}: macro-F1 {fold['macro_f1']:.3f} "
                  f"ECE {fold['ece_before']:.3f}->{fold['ece_after']:.3f} ({fold['seconds']:.1f} s)", file=log, flush=True)
    return {"dataset": path.stem, "batches": data.batch_names, "ours": ours, "peers": peers}


def fold_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per held-out lab: ours (mean, std over seeds) and each peer's macro-F1/accuracy, with the outcome per peer."""
    rows = []
    for batch in result["batches"]:
        runs = [f for f in result["ours"] if f["batch"] == batch]
        f1 = np.array([f["macro_f1"] for f in runs])
        row: dict[str, Any] = {
            "batch": batch,
            "ours": float(f1.mean()), "ours_std": float(f1.std()),
            "ours_accuracy": float(np.mean([f["accuracy"] for f in runs])),
        }
        for peer, scores in result["peers"][batch].items():
            row[peer] = scores["macro_f1"]
            row[f"{peer}_accuracy"] = scores["accuracy"]
            diff_pp = 100 * (row["ours"] - scores["macro_f1"])
            row[f"{peer}_outcome"] = "tie" if abs(diff_pp) <= TIE_PP else ("win" if diff_pp > 0 else "loss")
        rows.append(row)
    return rows


def dataset_summary(result: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
    """Per data set: ours mean ± std over seeds of the mean over labs; peers' mean over labs; calibration means."""
    per_seed = [float(np.mean([f["macro_f1"] for f in result["ours"] if f["seed"] == s])) for s in seeds]
    summary: dict[str, Any] = {"ours": float(np.mean(per_seed)), "ours_std": float(np.std(per_seed))}
    for peer in PEERS:
        values = [result["peers"][b][peer]["macro_f1"] for b in result["batches"] if peer in result["peers"][b]]
        if values:
            summary[peer] = float(np.mean(values))
    for key in ("ece_before", "ece_after", "known_unknown_today", "known_unknown_novelty", "temperature"):
        summary[key] = float(np.mean([f[key] for f in result["ours"]]))
    unseen = [f for f in result["ours"] if f["n_unseen"]]
    for key in ("unseen_unknown_today", "unseen_unknown_novelty"):
        summary[key] = float(np.mean([f[key] for f in unseen])) if unseen else None
    return summary


def accuracy_goal_lines(summaries: dict[str, dict[str, Any]], names: dict[str, str]) -> list[str]:
    """The accuracy goal against CellTypist: mean over the sets ≥ +1 pp, no set more than 0.5 pp below."""
    sets = [n for n, s in summaries.items() if "celltypist" in s]
    if not sets:
        return []
    ours = float(np.mean([summaries[n]["ours"] for n in sets]))
    peer = float(np.mean([summaries[n]["celltypist"] for n in sets]))
    below = [f"{n} {100 * (summaries[n]['ours'] - summaries[n]['celltypist']):+.1f} pp" for n in sets
             if 100 * (summaries[n]["ours"] - summaries[n]["celltypist"]) < -TIE_PP]
    gain = 100 * (ours - peer)
    return [
        f"- Mean over the {len(sets)} sets: ours {ours:.4f}, {names['celltypist']} {peer:.4f} ({gain:+.2f} pp)."
        f" Goal (≥ +{GOAL_PP:.0f} pp, no set more than {TIE_PP} pp below): "
        + ("met." if gain >= GOAL_PP and not below else
           "**not met**" + (f": {gain:+.2f} pp on average" if gain < GOAL_PP else "")
           + (f"; below by more than {TIE_PP} pp: {', '.join(below)}." if below else
              f"; no set is more than {TIE_PP} pp below."))
    ]


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def format_section(results: list[dict[str, Any]], seeds: list[int], assignments: list[str], novelty: str) -> str:
    """The ``lobo`` section of docs/benchmarks.md, every figure from ``results``."""
    from training.metrics import ECE_BINS

    peers = [p for p in PEERS if any(p in r["peers"][b] for r in results for b in r["batches"])]
    names = {"logreg": "logistic regression", "celltypist": "CellTypist 1.7.1"}
    datasets = [r["dataset"] for r in results]
    command = "python -m benchmarks.lobo --dataset " + ("all" if datasets == list(DATASETS) else " ".join(datasets))
    command += " --seeds " + " ".join(map(str, seeds))
    if assignments:
        command += "".join(f" --set {a}" for a in assignments)
    lines = [
        "## Leave-one-lab-out: `celltype train` defaults vs CellTypist and logistic regression",
        "",
        f"`{command}` — every peer trained and scored in the same run on the same folds and cells"
        f" ({', '.join(names[p] for p in peers)}; deterministic, one run per fold; they train on all cells of the"
        " training labs, ours holds 10% of them out for validation). Macro-F1 of argmax labels over the held-out"
        f" lab's cells of types seen in training; ours: mean ± std over seeds {seeds}. Outcome per fold: win / tie"
        f" / loss for ours, tie when |Δ| ≤ {TIE_PP} pp.",
        "",
        "| data set | held-out lab | ours | " + " | ".join(f"{names[p]} | Δ" for p in peers) + " |",
        "|---|---|---|" + "---|---|" * len(peers),
    ]
    tally = {p: {"win": 0, "tie": 0, "loss": 0} for p in peers}
    summaries = {}
    for result in results:
        summary = summaries[result["dataset"]] = dataset_summary(result, seeds)
        for row in fold_table(result):
            cells = []
            for p in peers:
                if p in row:
                    tally[p][row[f"{p}_outcome"]] += 1
                    cells.append(f"{row[p]:.3f} | {100 * (row['ours'] - row[p]):+.1f} pp ({row[f'{p}_outcome']})")
                else:
                    cells.append("— | —")
            lines.append(f"| {result['dataset']} | {row['batch']} | {row['ours']:.3f} ± {row['ours_std']:.3f} | "
                         + " | ".join(cells) + " |")
        means = [f"{summary[p]:.3f} | {100 * (summary['ours'] - summary[p]):+.1f} pp" if p in summary else "— | —"
                 for p in peers]
        lines.append(f"| **{result['dataset']}** | **mean** | **{summary['ours']:.3f} ± {summary['ours_std']:.3f}** | "
                     + " | ".join(means) + " |")
    lines += [""] + [
        f"- Against {names[p]}: {t['win']} wins, {t['tie']} ties, {t['loss']} losses over "
        f"{sum(t.values())} folds." for p, t in tally.items()
    ]
    lines += accuracy_goal_lines(summaries, names)
    lines += [
        "",
        "### Calibration and Unknown on the held-out lab (mean over folds and seeds)",
        "",
        f"ECE ({ECE_BINS} bins) of the top probability over held-out cells of known types, before (T = 1) and after"
        " temperature scaling fitted on the training labs' validation cells; share of known-type cells called"
        f" Unknown by today's rule (top probability < 0.5) and with the novelty detector `{novelty}` added"
        " (`benchmarks.novelty`); for the folds whose held-out lab has types absent from training, the share of"
        " those cells called Unknown.",
        "",
        "| data set | temperature | ECE before | ECE after | known → Unknown (p < 0.5) | known → Unknown (+ novelty) |"
        " unseen → Unknown (p < 0.5) | unseen → Unknown (+ novelty) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summaries.items():
        lines.append(f"| {name} | {s['temperature']:.2f} | {s['ece_before']:.3f} | {s['ece_after']:.3f} | "
                     f"{_pct(s['known_unknown_today'])} | {_pct(s['known_unknown_novelty'])} | "
                     f"{_pct(s['unseen_unknown_today'])} | {_pct(s['unseen_unknown_novelty'])} |")
    over = [f"{n} {s['ece_after']:.3f}" for n, s in summaries.items() if s["ece_after"] > 0.03]
    lines += ["", "- ECE goal (≤ 0.03 on held-out labs after scaling): "
              + ("met on every set." if not over else f"**not met** on {', '.join(over)}.")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the report; write JSON and the docs section."""
    from benchmarks.peers.celltypist import default_env_dir

    parser = argparse.ArgumentParser(prog="python -m benchmarks.lobo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", nargs="+", default=["all"], help=f"some of {', '.join(DATASETS)}, or 'all'")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of ours (default 0 1 2)")
    parser.add_argument("--set", action="append", default=[], dest="assignments", metavar="KEY=VALUE",
                        help="override a training config key (repeatable)")
    parser.add_argument("--novelty", default=None, metavar="METHOD@QUANTILE",
                        help="novelty rule for the Unknown columns (default: benchmarks.novelty's default)")
    parser.add_argument("--no-celltypist", action="store_true", help="skip the CellTypist peer")
    parser.add_argument("--celltypist-env", type=Path, default=None,
                        help=f"pip --target folder with CellTypist (default {default_env_dir()}; installed if missing)")
    parser.add_argument("--json", type=Path, help="write every fold's result here")
    parser.add_argument("--from-json", type=Path, help="only rewrite the report from an earlier --json")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md", help="report file")
    parser.add_argument("--no-doc", action="store_true", help="do not touch the report file")
    parser.add_argument("--data-dir", help=f"folder of the .h5ad files (default: ${DATA_DIR_ENV} or {DEFAULT_DATA_DIR})")
    args = parser.parse_args(argv)

    from benchmarks.novelty import DEFAULT_RULE
    from model.errors import CellTypeError
    from model.novelty import METHODS
    from training.config import parse_assignments

    novelty = args.novelty or DEFAULT_RULE
    method, _, quantile = novelty.partition("@")
    names = list(DATASETS) if args.dataset == ["all"] else args.dataset
    try:
        if method not in METHODS or not quantile.replace(".", "", 1).isdigit() or not 0 < float(quantile) < 1:
            raise CellTypeError(f"--novelty must be METHOD@QUANTILE with METHOD one of {', '.join(METHODS)} and "
                                f"0 < QUANTILE < 1, got {novelty!r}")
        unknown = sorted(set(names) - set(DATASETS))
        if unknown:
            raise CellTypeError(f"unknown data set(s) {', '.join(unknown)}; choose from {', '.join(DATASETS)}")
        if args.from_json:
            saved = json.loads(args.from_json.read_text())
            results, seeds, assignments, novelty = saved["results"], saved["seeds"], saved["overrides"], saved["novelty"]
        else:
            parse_assignments(args.assignments)
            directory = data_directory(args.data_dir)
            paths = [directory / f"{name}.h5ad" for name in names]
            missing = [str(p) for p in paths if not p.is_file()]
            if missing:
                raise CellTypeError(f"data set file(s) not found: {', '.join(missing)} (set --data-dir)")
            import torch

            torch.set_num_threads(1)
            started = time.perf_counter()
            results = [evaluate_dataset(p, args.seeds, args.assignments, novelty, not args.no_celltypist,
                                        args.celltypist_env, sys.stderr) for p in paths]
            seeds, assignments = args.seeds, args.assignments
            print(f"total {time.perf_counter() - started:.0f} s", file=sys.stderr)
            if args.json:
                args.json.write_text(json.dumps({"seeds": seeds, "overrides": assignments, "novelty": novelty,
                                                 "results": results}, indent=1) + "\n")
    except (CellTypeError, RuntimeError) as exc:
        print(f"benchmarks.lobo: error: {exc}", file=sys.stderr)
        return 2
    section = format_section(results, seeds, assignments, novelty)
    print(section)
    if not args.no_doc:
        replace_section(args.doc, *SECTION, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
