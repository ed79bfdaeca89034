"""``celltype train``: load labeled .h5ad files, train, write the output directory, publish to MLflow."""

from __future__ import annotations

import argparse
import math
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from model.errors import InputError
from model.registry import RegistryUnavailableError
from training.config import DEVICES, KEYS, TrainConfig, resolve_config

EXIT_REGISTRY_UNAVAILABLE = 3
"""Exit code when training succeeded but the MLflow store could not be reached (the bundle is kept)."""


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand."""
    parser = subparsers.add_parser(
        "train",
        help="train a cell-type model on labeled .h5ad files and register it in MLflow",
        description=(
            "Train a cell-type classifier on one or more labeled .h5ad files (several batches/labs), "
            "score it on held-out batches, write the output directory and publish it to MLflow."
        ),
        epilog=f"Config keys for --config/--set: {', '.join(KEYS)}",
    )
    parser.add_argument("data", nargs="+", metavar="DATA.h5ad", help="labeled .h5ad file(s)")
    parser.add_argument("--label-key", help="obs column with the cell types (default: cell_type)")
    parser.add_argument("--batch-key", help="obs column with the batch/lab of each cell (default: batch)")
    parser.add_argument(
        "--holdout-batch",
        action="append",
        metavar="NAME",
        help="batch never used for training, scored separately (repeatable)",
    )
    parser.add_argument("--config", metavar="FILE", help="training config (.toml or .json, flat key = value)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", dest="assignments",
        help="override one config key (repeatable), e.g. --set epochs=30 --set hidden_sizes=512,256",
    )
    parser.add_argument("--out", metavar="DIR", help="output directory (default: ./outputs/<timestamp>)")
    parser.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                        "else sqlite:///./mlflow.db)")
    parser.add_argument("--register", metavar="NAME", help="register the model under this name (alias challenger)")
    parser.add_argument("--device", choices=DEVICES, help="where to train (default: auto = CUDA when available)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--seed", type=int, help="random seed (default: 0)")
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="data-parallel training with N processes on this machine (torchrun; gloo on CPU, "
                        "NCCL on CUDA); batch_size is per process (default: 1)")
    parser.add_argument("--dist-norm", choices=("local", "sync"), default="local",
                        help="with --nproc > 1: normalize with each process's mini-batch and average the running "
                        "statistics (local, default), or all-reduce the batch moments every step (sync)")
    parser.add_argument("--dist-stats-every", type=int, metavar="STEPS",
                        help="local mode: average the running statistics every STEPS steps (default: 10; "
                        "always at each epoch end)")
    parser.set_defaults(handler=run_train)


def _output_directory(args: argparse.Namespace) -> Path:
    if args.out is None:
        if args.resume:
            raise InputError("--resume needs --out DIR: the output directory of the run to continue")
        return Path("outputs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a directory")
    if not args.resume and out.is_dir() and any(out.iterdir()):
        raise InputError(
            f"--out {out} already holds files; choose a new directory, or pass --resume to continue "
            "the run that was interrupted there"
        )
    return out


def _format(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def run_train(args: argparse.Namespace) -> int:
    """Handler of ``celltype train``; returns the exit code (3: trained but not published)."""
    if args.nproc != 1:
        from training.distributed import launch

        return launch(args)
    from training.data import load_labeled
    from training.tracking import publish, resolve_tracking_uri
    from training.trainer import train_model, write_run

    config: TrainConfig = resolve_config(
        args.config,
        args.assignments,
        {
            "label_key": args.label_key,
            "batch_key": args.batch_key,
            "holdout_batches": tuple(args.holdout_batch) if args.holdout_batch else None,
            "device": args.device,
            "seed": args.seed,
        },
    )
    missing = [path for path in args.data if not Path(path).is_file()]
    if missing:
        raise InputError(f"data file not found: {', '.join(missing)}")
    out = _output_directory(args)
    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    print(f"output directory: {out}")

    data, report = load_labeled(args.data, label_key=config.label_key, batch_key=config.batch_key)
    for line in report.lines():
        print(line)
    run = train_model(
        config, data, datasets=[str(p) for p in args.data], out_dir=out, progress=not args.no_progress,
        resume=args.resume,
    )
    bundle_dir = write_run(run, out, report.to_dict())

    holdout = run.metrics["holdout"]
    for batch, scores in holdout["per_batch"].items():
        print(
            f"held-out {batch}: accuracy {_format(scores['accuracy'])}, macro-F1 {_format(scores['macro_f1'])} "
            f"({scores['n_scored']} of {scores['n_cells']} cells scored)"
        )
    validation = run.metrics["validation"] or {}
    calibration = run.metrics["calibration"]
    training = run.metrics["training"]
    print(
        f"validation macro-F1 {_format(validation.get('macro_f1'))}; ECE {_format(calibration['ece_before'])} -> "
        f"{_format(calibration['ece_after'])} (temperature {calibration['temperature']:.2f}); "
        f"{training['epochs_run']} epochs, final weights: {training['selected']}; {training['n_genes']} genes, "
        f"{training['seconds']:.1f} s"
    )
    print(f"bundle: {bundle_dir}")
    try:
        result = publish(out, tracking_uri=tracking_uri, register_name=args.register)
    except RegistryUnavailableError as exc:
        print(f"celltype train: {exc}", file=sys.stderr)
        return EXIT_REGISTRY_UNAVAILABLE
    registered = f", registered {result.registered_name} version {result.version}" if result.version else ""
    print(f"MLflow run {result.run_id} at {result.tracking_uri}{registered}")
    return 0
