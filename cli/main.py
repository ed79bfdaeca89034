"""``celltype`` — the command-line entry point.

Each package contributes its subcommands through an ``add_commands(subparsers)`` function that adds
parsers with a ``handler`` default; handlers return an exit code. Errors this project raises on purpose
(:class:`model.errors.CellTypeError`) become a one-line message and exit code 2
(:data:`training.run.EXIT_INPUT`), never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from model.errors import CellTypeError
from training.run import EXIT_INPUT

COMMAND_MODULES = ("training.cli", "training.registry_cli", "service.cli", "service.score_cli", "training.adapt_cli")
"""Modules whose ``add_commands`` register subcommands, in the order they appear in ``--help``."""


def build_parser() -> argparse.ArgumentParser:
    """The ``celltype`` argument parser with every package's subcommands."""
    parser = argparse.ArgumentParser(
        prog="celltype",
        description="Cell-type classification that holds up across labs: train, register, serve, score.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_commands(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``celltype`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except CellTypeError as exc:
        print(f"celltype {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print(f"celltype {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
