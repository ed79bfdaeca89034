"""``python -m benchmarks.reliability [--quick] [--write] [--workdir DIR] [--fuzz-examples N]``: run the suite,
print the report."""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmarks.reliability.file_fuzz import LONG_EXAMPLES, QUICK_EXAMPLES
from benchmarks.reliability.harness import ROOT
from benchmarks.reliability.report import DOC, render
from benchmarks.reliability.suite import fuzz_examples_for, run_all


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite, print the summary, optionally write ``docs/reliability.md``; exit 1 if anything failed."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.reliability", description="Reliability and security suite: what celltype survives, measured on real processes."
    )
    parser.add_argument("--quick", action="store_true", help="short versions of every scenario")
    parser.add_argument("--write", action="store_true", help=f"write {DOC.relative_to(ROOT)}")
    parser.add_argument(
        "--workdir", type=Path, help="keep the scenarios' files here (default: a temporary directory)"
    )
    parser.add_argument(
        "--fuzz-examples",
        type=_positive,
        metavar="N",
        help=f"malformed files the file fuzzer generates (default {LONG_EXAMPLES}, with --quick {QUICK_EXAMPLES})",
    )
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="celltype-reliability-")))
        else:
            workdir = args.workdir.resolve()
            workdir.mkdir(parents=True, exist_ok=True)
        report = run_all(workdir, quick=args.quick, fuzz_examples=args.fuzz_examples)
    command = command_line(args.quick, args.fuzz_examples)
    text = render(report, command).replace(str(workdir), "WORKDIR")  # no machine paths in the page
    print(text)
    if args.write:
        DOC.parent.mkdir(parents=True, exist_ok=True)
        DOC.write_text(text)
        print(f"wrote {DOC}")
    failed = [o for o in report.all_outcomes if not o.passed]
    failed_fuzz = [f for f in report.fuzz if f.failures or f.server_errors]
    load_failed = report.load is not None and report.load.errors > 0
    return 1 if failed or failed_fuzz or load_failed else 0


def command_line(quick: bool, fuzz_examples: int | None) -> str:
    """The command that reproduces a run, as the page names it (``--fuzz-examples`` only when not the default)."""
    command = "python -m benchmarks.reliability" + (" --quick" if quick else "")
    if fuzz_examples is not None and fuzz_examples != fuzz_examples_for(quick):
        command += f" --fuzz-examples {fuzz_examples}"
    return command + " --write"


if __name__ == "__main__":
    sys.exit(main())
