"""``python -m benchmarks``: run the evidence report (see :mod:`benchmarks.evidence`) and write it.

    python -m benchmarks                 # the whole report (about an hour on 2 cores), resumable
    python -m benchmarks --quick         # minutes: one small data set, BRN vs BN, short training
    python -m benchmarks --report-only   # rewrite docs/benchmarks.md from the results JSON

Results go to ``--results`` (default ``outputs/benchmarks/evidence.json``, or ``evidence_quick.json``)
after every job; a rerun skips finished jobs. The report replaces the ``<!-- evidence:start -->``
section of ``--doc`` (default ``docs/benchmarks.md``) and writes plots to ``--img-dir``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.data_sets import DEFAULT_DATA_DIR, data_directory
from benchmarks.evidence import Plan, quick_plan, run_plan
from benchmarks.evidence_report import write_report

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    """Run the plan, then write the report; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the few-minutes version")
    parser.add_argument("--results", type=Path, help="results JSON (resumable)")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md", help="report file")
    parser.add_argument("--img-dir", type=Path, default=ROOT / "docs" / "img", help="folder of the PNG plots")
    parser.add_argument("--data-dir", help=f"folder of the .h5ad files (default {DEFAULT_DATA_DIR})")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default 0 1 2; quick: 0)")
    parser.add_argument("--datasets", nargs="+", metavar="NAME",
                        help="only these real data sets (default: all of the plan's; the report keeps every result)")
    parser.add_argument("--budget-s", type=float, help="stop starting new jobs after this many seconds")
    parser.add_argument("--no-celltypist", action="store_true", help="skip the CellTypist peer")
    parser.add_argument("--celltypist-env", type=Path, default=Path("/tmp/celltypist_env"),
                        help="pip --target folder with CellTypist 1.7.1 (installed there if missing)")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the report from --results")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(max(1, args.threads))
    plan = quick_plan(celltypist=not args.no_celltypist) if args.quick else Plan(celltypist=not args.no_celltypist)
    if args.seeds:
        plan = Plan(**{**plan.__dict__, "seeds": tuple(args.seeds)})
    plan = Plan(**{**plan.__dict__, "celltypist_env": args.celltypist_env})
    if args.datasets:
        plan = Plan(**{**plan.__dict__, "datasets": tuple(args.datasets),
                       "batch_size_datasets": tuple(d for d in plan.batch_size_datasets if d in args.datasets)})
    name = "evidence_quick.json" if args.quick else "evidence.json"
    results = args.results or ROOT / "outputs" / "benchmarks" / name
    directory = data_directory(args.data_dir)
    missing = [d for d in plan.datasets if not (directory / f"{d}.h5ad").is_file()]
    if missing:
        print(f"python -m benchmarks: error: data set(s) {', '.join(missing)} not in {directory} (set --data-dir)",
              file=sys.stderr)
        return 2
    if not args.report_only:
        run_plan(plan, results, directory, sys.stderr, args.budget_s)
    write_report(results, args.doc, args.img_dir, quick=args.quick)
    print(f"wrote {args.doc} and plots in {args.img_dir} from {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
