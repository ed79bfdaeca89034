"""``python -m benchmarks.reliability [--quick] [--write] [--workdir DIR]``: run the suite, print the report."""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmarks.reliability.harness import ROOT
from benchmarks.reliability.report import DOC, render
from benchmarks.reliability.suite import run_all


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
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="celltype-reliability-")))
        else:
            workdir = args.workdir.resolve()
            workdir.mkdir(parents=True, exist_ok=True)
        report = run_all(workdir, quick=args.quick)
    command = "python -m benchmarks.reliability" + (" --quick" if args.quick else "") + " --write"
    text = render(report, command).replace(str(workdir), "WORKDIR")  # no machine paths in the page
    print(text)
    if args.write:
        DOC.parent.mkdir(parents=True, exist_ok=True)
        DOC.write_text(text)
        print(f"wrote {DOC}")
    failed = [o for o in report.outcomes if not o.passed]
    failed_fuzz = [f for f in report.fuzz if f.failures or f.server_errors]
    load_failed = report.load is not None and report.load.errors > 0
    return 1 if failed or failed_fuzz or load_failed else 0



if __name__ == "__main__":
    sys.exit(main())
