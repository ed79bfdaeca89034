"""``celltype train`` as one flow: its arguments, load → train → write → publish, and its exit codes.

Both ways of running it use this module, so they cannot drift apart: one process
(:func:`training.cli.run_train` calls :func:`train_and_publish`) and every rank of a data-parallel run
(:func:`training.distributed.run_distributed` calls :func:`load`, then rank 0 :func:`write_and_publish`).
Where each step lives: reading data :mod:`training.data`, the run in memory :mod:`training.pipeline`,
the output directory :mod:`training.outputs`, the MLflow run and registered version
:mod:`training.tracking`.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from model.errors import InputError
from model.registry.store import RegistryUnavailableError
from training.config import DEVICES, KEYS, TrainConfig, resolve_config
from training.data import DataReport, LabeledData, load_labeled
from training.outputs import write_run
from training.pipeline import TrainingRun, train_model
from training.streaming import DATA_MODES, DiskLabeledData, choose_data_mode, open_labeled, streaming_setup
from training.tracking import publish, resolve_tracking_uri

EXIT_OK = 0
"""Trained, written and (when asked) published."""
EXIT_REGISTRY_UNAVAILABLE = 3
"""Trained and written, but the MLflow store could not be reached: the bundle is kept and the message
names the ``celltype register`` command that publishes it later."""


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``celltype train`` (also those of ``torchrun ... -m training.distributed``)."""
    parser.epilog = f"Config keys for --config/--set: {', '.join(KEYS)}"
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
    parser.add_argument("--data-mode", choices=DATA_MODES,
                        help="train with every cell in memory, or reading rows from the files as needed (disk); "
                        "default: auto, from the data size against the available memory")
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="data-parallel training with N processes on this machine (torchrun; gloo on CPU, "
                        "NCCL on CUDA); batch_size is per process (default: 1)")
    parser.add_argument("--dist-norm", choices=("local", "sync"), default="local",
                        help="with --nproc > 1: normalize with each process's mini-batch and average the running "
                        "statistics (local, default), or all-reduce the batch moments every step (sync)")
    parser.add_argument("--dist-stats-every", type=int, metavar="STEPS",
                        help="local mode: average the running statistics every STEPS steps (default: 10; "
                        "always at each epoch end)")


@dataclass(frozen=True)
class TrainRequest:
    """What a ``celltype train`` command asks for, checked: the resolved config and where things go.

    Attributes:
        config: defaults < ``--config`` < ``--set`` < explicit flags.
        data: the labeled ``.h5ad`` files (they exist).
        out: the output directory (new, or the one to resume).
        tracking_uri: the MLflow store to publish to.
        register: the registered-model name (``None``: a run without a registered version).
        progress: show progress bars.
        resume: continue the interrupted run in ``out``.
    """

    config: TrainConfig
    data: list[str]
    out: Path
    tracking_uri: str
    register: str | None
    progress: bool
    resume: bool = False


def request_from_args(args: argparse.Namespace, *, check_out: bool = True) -> TrainRequest:
    """Resolve and check the parsed ``celltype train`` arguments.

    ``check_out``: check that ``--out`` is new (or resumable); with several processes only one of them
    may (the others would race with it creating the directory).

    Raises:
        InputError: a data file is missing, or ``--out`` is unusable.
        ConfigError: a bad config file, key or value.
    """
    config = resolve_config(
        args.config,
        args.assignments,
        {
            "label_key": args.label_key,
            "batch_key": args.batch_key,
            "holdout_batches": tuple(args.holdout_batch) if args.holdout_batch else None,
            "device": args.device,
            "seed": args.seed,
            "data_mode": getattr(args, "data_mode", None),
        },
    )
    missing = [str(path) for path in args.data if not Path(path).is_file()]
    if missing:
        raise InputError(f"data file not found: {', '.join(missing)}")
    return TrainRequest(
        config=config,
        data=[str(path) for path in args.data],
        out=output_directory(args.out, resume=args.resume) if check_out else Path(args.out),
        tracking_uri=resolve_tracking_uri(args.tracking_uri),
        register=args.register,
        progress=not args.no_progress,
        resume=bool(args.resume),
    )


def output_directory(out: str | None, *, resume: bool) -> Path:
    """``out`` checked (``None``: ``./outputs/<timestamp>``): new or empty, or the run to resume."""
    if out is None:
        if resume:
            raise InputError("--resume needs --out DIR: the output directory of the run to continue")
        return Path("outputs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise InputError(f"--out {path} is a file; give a directory")
    if not resume and path.is_dir() and any(path.iterdir()):
        raise InputError(
            f"--out {path} already holds files; choose a new directory, or pass --resume to continue "
            "the run that was interrupted there"
        )
    return path


def load(request: TrainRequest, *, echo: bool = True) -> tuple[LabeledData | DiskLabeledData, DataReport]:
    """Read the request's labeled files, in memory or left on disk as ``data_mode`` chooses
    (:func:`training.streaming.choose_data_mode`); with ``echo``, print the choice and the data report."""
    config = request.config
    choice = choose_data_mode(request.data, config.data_mode)
    if echo:
        print(choice.message())
    keys = {"label_key": config.label_key, "batch_key": config.batch_key}
    data, report = open_labeled(request.data, **keys) if choice.mode == "disk" else load_labeled(request.data, **keys)
    if echo:
        for line in report.lines():
            print(line)
    return data, report


def write_and_publish(run: TrainingRun, request: TrainRequest, report: DataReport, *, publish_run: bool = True) -> int:
    """Write the run's output directory, print its scores, publish it; return the exit code.

    Returns :data:`EXIT_REGISTRY_UNAVAILABLE` (after a one-line message on stderr naming the command that
    publishes it later) when the MLflow store cannot be reached, else :data:`EXIT_OK`.
    """
    bundle_dir = write_run(run, request.out, report.to_dict())
    for line in summary_lines(run):
        print(line)
    print(f"bundle: {bundle_dir}")
    if not publish_run:
        return EXIT_OK
    try:
        result = publish(request.out, tracking_uri=request.tracking_uri, register_name=request.register)
    except RegistryUnavailableError as exc:
        print(f"celltype train: {exc}", file=sys.stderr)
        return EXIT_REGISTRY_UNAVAILABLE
    registered = f", registered {result.registered_name} version {result.version}" if result.version else ""
    print(f"MLflow run {result.run_id} at {result.tracking_uri}{registered}")
    return EXIT_OK


def summary_lines(run: TrainingRun) -> list[str]:
    """The scores of a finished run, in words: each held-out batch, validation, calibration, training."""
    lines = [
        f"held-out {batch}: accuracy {_format(scores['accuracy'])}, macro-F1 {_format(scores['macro_f1'])} "
        f"({scores['n_scored']} of {scores['n_cells']} cells scored)"
        for batch, scores in run.metrics["holdout"]["per_batch"].items()
    ]
    validation = run.metrics["validation"] or {}
    calibration = run.metrics["calibration"]
    training = run.metrics["training"]
    lines.append(
        f"validation macro-F1 {_format(validation.get('macro_f1'))}; ECE {_format(calibration['ece_before'])} -> "
        f"{_format(calibration['ece_after'])} (temperature {calibration['temperature']:.2f}); "
        f"{training['epochs_run']} epochs, final weights: {training['selected']}; {training['n_genes']} genes, "
        f"{training['seconds']:.1f} s"
    )
    return lines


def train_and_publish(request: TrainRequest) -> int:
    """The whole one-process run: load, train (resuming if asked), write, publish; returns the exit code."""
    print(f"output directory: {request.out}")
    data, report = load(request)
    run = train_model(
        request.config, data, datasets=request.data, out_dir=request.out, progress=request.progress,
        resume=request.resume, configure_trainer=streaming_setup(data, request.config.sampler_block_rows),
    )
    return write_and_publish(run, request, report)


def _format(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
