"""``celltype`` — the command-line entry point.

Each package contributes its subcommands through an ``add_commands(subparsers)`` function that adds
parsers with a ``handler`` default; handlers return an exit code. Errors this project raises on purpose
(:class:`model.errors.CellTypeError`) become a one-line message and exit code 2
(:data:`model.errors.EXIT_INPUT`), never a traceback.

A command imports only the module that defines it (``celltype score`` never loads the training stack,
which would cost it over a second of start-up); ``celltype --help`` and an unknown command load them all.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import os
import sys
import threading
from collections.abc import Sequence

from model.errors import EXIT_INPUT, CellTypeError

COMMAND_MODULES = ("training.cli", "training.registry_cli", "service.cli", "service.score_cli", "training.adapt_cli")
"""Modules whose ``add_commands`` register subcommands, in the order they appear in ``--help``."""
COMMANDS = {
    "train": "training.cli",
    "register": "training.registry_cli",
    "promote": "training.registry_cli",
    "serve": "service.cli",
    "score": "service.score_cli",
    "adapt": "training.adapt_cli",
}
"""Subcommand -> the module of :data:`COMMAND_MODULES` that defines it (so only that one is imported)."""
QUICK_EXIT_COMMANDS = frozenset({"score"})
"""Commands whose process ends without tearing the interpreter down (see :func:`quick_exit`)."""


def modules_for(argv: Sequence[str]) -> tuple[str, ...]:
    """The command modules to load for ``argv``: the one defining its subcommand, else all of them."""
    module = COMMANDS.get(argv[0]) if argv else None
    return (module,) if module in COMMAND_MODULES else COMMAND_MODULES


def build_parser(modules: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``celltype`` argument parser with the subcommands of ``modules`` (default: every package's)."""
    parser = argparse.ArgumentParser(
        prog="celltype",
        description="Cell-type classification that holds up across labs: train, register, serve, score.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES if modules is None else modules:
        importlib.import_module(module_name).add_commands(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``celltype`` with ``argv`` and return the exit code.

    Without ``argv`` (the ``celltype`` program itself: ``sys.argv[1:]``), a command of
    :data:`QUICK_EXIT_COMMANDS` ends the process when it is done (:func:`quick_exit`) instead of returning.
    """
    as_program = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(modules_for(argv))
    args = parser.parse_args(argv)
    code = run_command(args)
    if as_program and args.command in QUICK_EXIT_COMMANDS:
        quick_exit(code)
    return code


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command's handler; a :class:`CellTypeError` becomes a one-line message and exit code 2."""
    try:
        return int(args.handler(args) or 0)
    except CellTypeError as exc:
        print(f"celltype {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print(f"celltype {args.command}: interrupted", file=sys.stderr)
        return 130


def quick_exit(code: int) -> None:
    """End the process with ``code`` the way a normal exit does, minus the interpreter's teardown.

    Other threads are waited for, ``atexit`` handlers run and the standard streams are flushed, as at a
    normal exit; what is skipped is freeing every module and object one by one (with torch, anndata and
    pandas loaded: a final garbage collection over a few hundred thousand objects), which took 0.5-1 s
    of every ``celltype score`` run. Everything a command writes is closed by the command itself.
    """
    current = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not current and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe or stream: nothing more to write
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
