"""Leave-one-batch-out (LOBO) evaluation of ``celltype train``'s defaults against CellTypist.

For each batch of a data set: train with the default config (plus ``--set`` overrides) on the other
batches, with no MLflow and no files written, and score the held-out batch: macro-F1 of argmax labels
(no "Unknown") over the held-out cells whose type was seen in training, averaged over the classes
present among them. The table shows, per data set, the mean over folds of each seed, then mean ± std
over seeds, next to CellTypist 1.7.1's LOBO mean macro-F1 measured on the same machine.

    python -m benchmarks.lobo --dataset all --seeds 0 1 2 [--set epochs=30 ...] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

CELLTYPIST_MACRO_F1 = {
    "cellbench": 0.982,
    "muscat_kang": 0.914,
    "symphony_pbmc": 0.809,
    "scannotate_pbmc": 0.974,
    "scclassify_pancreas": 0.983,
}
"""CellTypist 1.7.1 defaults, leave-one-batch-out mean macro-F1 (docs: /work/shared/REFERENCE.md)."""

DATA_DIR_ENV = "CELLTYPE_DATA_DIR"
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "h5ad"


def data_directory(cli_value: str | None) -> Path:
    """``--data-dir``, else ``$CELLTYPE_DATA_DIR``, else ``../shared/data/h5ad`` beside the repository."""
    return Path(cli_value or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def run_fold(data: Any, batch: str, seed: int, assignments: list[str]) -> dict[str, Any]:
    """Train on every batch but ``batch`` with the defaults (+ overrides) and score ``batch``."""
    from training.config import resolve_config
    from training.trainer import train_model

    config = resolve_config(None, assignments, {"holdout_batches": (batch,), "seed": seed, "device": "cpu"})
    started = time.perf_counter()
    run = train_model(config, data)
    seconds = time.perf_counter() - started
    scores = run.metrics["holdout"]["per_batch"][batch]
    return {
        "batch": batch,
        "seed": seed,
        "macro_f1": scores["macro_f1"],
        "accuracy": scores["accuracy"],
        "n_scored": scores["n_scored"],
        "n_cells": scores["n_cells"],
        "epochs_run": run.metrics["training"]["epochs_run"],
        "final_weights": run.metrics["training"]["selected"],
        "seconds": seconds,
    }


def evaluate_dataset(path: Path, seeds: list[int], assignments: list[str], log: Any) -> dict[str, Any]:
    """All LOBO folds of one data set for every seed; returns per-fold rows and the summary."""
    from training.data import load_labeled

    data, _ = load_labeled(path, label_key="cell_type", batch_key="batch")
    folds = []
    for seed in seeds:
        for batch in data.batch_names:
            fold = run_fold(data, batch, seed, assignments)
            folds.append(fold)
            print(
                f"  {path.stem} seed {seed} held-out {batch}: macro-F1 {fold['macro_f1']:.3f} "
                f"accuracy {fold['accuracy']:.3f} ({fold['epochs_run']} epochs, {fold['seconds']:.1f} s)",
                file=log,
                flush=True,
            )
    per_seed = [float(np.mean([f["macro_f1"] for f in folds if f["seed"] == s])) for s in seeds]
    per_batch = {
        b: float(np.mean([f["macro_f1"] for f in folds if f["batch"] == b])) for b in data.batch_names
    }
    return {
        "dataset": path.stem,
        "macro_f1_mean": float(np.mean(per_seed)),
        "macro_f1_std": float(np.std(per_seed)),
        "per_seed": per_seed,
        "per_batch": per_batch,
        "celltypist": CELLTYPIST_MACRO_F1.get(path.stem),
        "seconds_per_fold": float(np.mean([f["seconds"] for f in folds])),
        "folds": folds,
    }


def format_table(results: list[dict[str, Any]]) -> str:
    """A plain-text table: ours (mean ± std over seeds) vs CellTypist, per data set."""
    lines = [f"{'dataset':<22} {'celltype':>15} {'CellTypist':>10} {'diff':>7} {'s/fold':>7}  per held-out batch"]
    for r in results:
        reference = r["celltypist"]
        diff = f"{r['macro_f1_mean'] - reference:+.3f}" if reference is not None else "n/a"
        batches = ", ".join(f"{b} {v:.3f}" for b, v in r["per_batch"].items())
        lines.append(
            f"{r['dataset']:<22} {r['macro_f1_mean']:>7.3f} ± {r['macro_f1_std']:.3f} "
            f"{reference if reference is not None else float('nan'):>10.3f} {diff:>7} {r['seconds_per_fold']:>7.1f}  {batches}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table; optionally write the results as JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lobo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="all", help=f"one of {', '.join(CELLTYPIST_MACRO_F1)} or 'all'")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default: 0 1 2; 0 with --quick)")
    parser.add_argument("--set", action="append", default=[], dest="assignments", metavar="KEY=VALUE",
                        help="override a training config key (repeatable)")
    parser.add_argument("--quick", action="store_true", help="one seed only")
    parser.add_argument("--json", metavar="OUT", help="write the results (per fold too) to this JSON file")
    parser.add_argument("--data-dir", help=f"folder of the .h5ad files (default: ${DATA_DIR_ENV} or {DEFAULT_DATA_DIR})")
    args = parser.parse_args(argv)

    from model.errors import CellTypeError
    from training.config import parse_assignments

    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    names = list(CELLTYPIST_MACRO_F1) if args.dataset == "all" else [args.dataset]
    directory = data_directory(args.data_dir)
    try:
        parse_assignments(args.assignments)
        paths = [directory / f"{name}.h5ad" for name in names]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise CellTypeError(f"data set file(s) not found: {', '.join(missing)} (set --data-dir)")
        started = time.perf_counter()
        results = []
        for path in paths:
            results.append(evaluate_dataset(path, seeds, args.assignments, sys.stderr))
            print(format_table(results[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    except CellTypeError as exc:
        print(f"benchmarks.lobo: error: {exc}", file=sys.stderr)
        return 2
    print(f"leave-one-batch-out macro-F1, seeds {seeds}, overrides {args.assignments or 'none'}")
    print(format_table(results))
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"seeds": seeds, "overrides": args.assignments, "results": results}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
