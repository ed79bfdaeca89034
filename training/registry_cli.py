"""``celltype register`` and ``celltype promote``: publishing a training output and moving aliases."""

from __future__ import annotations

import argparse
from pathlib import Path

from training.tracking import (
    CHAMPION,
    DEFAULT_EXPERIMENT,
    DEFAULT_METRIC,
    promote,
    publish,
    resolve_tracking_uri,
)

_TRACKING_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)"


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``register`` and ``promote`` subcommands to the ``celltype`` parser."""
    register = subparsers.add_parser(
        "register",
        help="publish a training output directory to MLflow and register it",
        description=(
            "Publish OUT_DIR (written by `celltype train --out`) as an MLflow run and register it as a new "
            "version of NAME with the alias 'challenger', e.g. after the tracking server was down."
        ),
    )
    register.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="the training output directory")
    register.add_argument(
        "--register", dest="register_name", required=True, metavar="NAME", help="registered model name"
    )
    register.add_argument("--tracking-uri", metavar="URI", help=_TRACKING_HELP)
    register.add_argument(
        "--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment (default: %(default)s)"
    )
    register.add_argument("--run-name", metavar="NAME", help="MLflow run name")
    register.set_defaults(handler=run_register)

    promote_parser = subparsers.add_parser(
        "promote",
        help="point a registry alias (champion) at a model version",
        description=(
            "Move NAME@ALIAS to --version. With --if-better the alias moves only when the version's METRIC tag "
            "beats the current holder's (if both lack a holdout_* metric, validation_* is compared)."
        ),
    )
    promote_parser.add_argument("name", metavar="NAME", help="registered model name")
    promote_parser.add_argument("--version", required=True, metavar="V", help="model version to promote")
    promote_parser.add_argument("--alias", default=CHAMPION, help="alias to move (default: %(default)s)")
    promote_parser.add_argument(
        "--if-better", action="store_true", help="move only if the version beats the alias's current version"
    )
    promote_parser.add_argument(
        "--metric",
        default=DEFAULT_METRIC,
        help="version tag compared by --if-better, higher is better (default: %(default)s)",
    )
    promote_parser.add_argument("--tracking-uri", metavar="URI", help=_TRACKING_HELP)
    promote_parser.set_defaults(handler=run_promote)


def run_register(args: argparse.Namespace) -> int:
    """Handler of ``celltype register``: publish, print where it went, return 0."""
    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    result = publish(
        args.out_dir,
        tracking_uri=tracking_uri,
        register_name=args.register_name,
        experiment=args.experiment,
        run_name=args.run_name,
    )
    if result.reused:
        print(
            f"already registered as {result.registered_name} version {result.version} (run {result.run_id}) "
            f"at {tracking_uri}; nothing changed"
        )
        return 0
    print(
        f"registered {result.registered_name} version {result.version} (alias {result.alias}) at {tracking_uri}"
    )
    print(f"  run {result.run_id}, bundle sha256 {result.bundle_sha256}, record {result.record_path}")
    print(
        f"  promote it with: celltype promote {result.registered_name} --version {result.version} --if-better"
    )
    return 0


def run_promote(args: argparse.Namespace) -> int:
    """Handler of ``celltype promote``: move the alias (or explain why not), return 0."""
    result = promote(
        args.name,
        args.version,
        tracking_uri=resolve_tracking_uri(args.tracking_uri),
        alias=args.alias,
        if_better=args.if_better,
        metric=args.metric,
    )
    print(("promoted: " if result.moved else "not promoted: ") + result.reason)
    return 0
