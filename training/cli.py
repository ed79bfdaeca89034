"""``celltype train``: the subcommand; one process runs :func:`training.run.train_and_publish`, ``--nproc N``
starts N data-parallel ranks (:func:`training.distributed.launch`)."""

from __future__ import annotations

import argparse

from training.distributed import launch
from training.run import add_train_arguments, request_from_args, train_and_publish


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand."""
    parser = subparsers.add_parser(
        "train",
        help="train a cell-type model on labeled .h5ad files and register it in MLflow",
        description=(
            "Train a cell-type classifier on one or more labeled .h5ad files (several batches/labs), "
            "score it on held-out batches, write the output directory and publish it to MLflow."
        ),
    )
    add_train_arguments(parser)
    parser.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    """Handler of ``celltype train``; returns the exit code (:mod:`training.run`: 3 = trained, not published)."""
    if args.nproc != 1:
        return launch(args)
    return train_and_publish(request_from_args(args))
