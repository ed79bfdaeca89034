"""Data-parallel training benchmark: step time and held-out macro-F1 of ``celltype train --nproc N``.

    python -m benchmarks.bench_distributed            # 1 and 2 ranks, local vs sync, BRN vs BN, batch 16 and 64
    python -m benchmarks.bench_distributed --quick    # batch 16 only, fewer epochs (a few minutes)
    python -m benchmarks.bench_distributed --write    # also replace the distributed section of docs/benchmarks.md

Every case is a real ``celltype train DATA --holdout-batch B --nproc N --dist-norm MODE`` subprocess
(torchrun for N > 1) publishing into a throw-away SQLite MLflow store. The step time is read from the
run's ``history.json``: per epoch, ``seconds / (optimizer steps in the epoch)`` (the epoch's seconds
include its validation pass), median over every epoch but the first (start-up, JIT and caches); the
held-out scores come from ``metrics.json``. ``batch_size`` is per rank, so N ranks take
``N * batch_size`` cells per step. Results are appended to ``--results`` after every case, so an
interrupted run keeps them and a rerun skips the finished cases.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.docs_section import replace_section

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- distributed:start -->", "<!-- distributed:end -->"
DEFAULT_DATA = ROOT.parent / "shared/data/h5ad/muscat_kang.h5ad"
DEFAULT_HOLDOUT = "ctrl107"


@dataclass(frozen=True)
class Case:
    """One training run of the grid: ranks, normalization across ranks, norm layer, per-rank batch size."""

    nproc: int
    dist_norm: str
    norm: str
    batch_size: int

    @property
    def key(self) -> str:
        """Identifier of the case in the results file."""
        return f"n{self.nproc}|{self.dist_norm}|{self.norm}|b{self.batch_size}"


def grid(nprocs: list[int], norms: list[str], batch_sizes: list[int], modes: list[str]) -> list[Case]:
    """Every case, single-process ones once (``dist_norm`` is meaningless there and recorded as ``-``)."""
    cases = []
    for batch_size in batch_sizes:
        for norm in norms:
            for nproc in nprocs:
                for mode in (["-"] if nproc == 1 else modes):
                    cases.append(Case(nproc, mode, norm, batch_size))
    return cases


def step_times_ms(history: list[dict[str, Any]]) -> list[float]:
    """Milliseconds per optimizer step of every epoch after the first (epochs without steps skipped)."""
    times, previous = [], 0
    for record in history:
        steps = int(record["step"]) - previous
        previous = int(record["step"])
        if record["epoch"] > 1 and steps > 0:
            times.append(1000.0 * float(record["seconds"]) / steps)
    return times


def run_case(case: Case, data: Path, holdout: str, epochs: int, seed: int, workdir: Path, tracking_uri: str,
             timeout_s: float, overrides: list[str]) -> dict[str, Any]:
    """Train one case with the real ``celltype train`` command; return its timings and held-out scores."""
    out = workdir / case.key.replace("|", "_")
    command = [
        sys.executable, "-m", "cli", "train", str(data), "--holdout-batch", holdout, "--out", str(out),
        "--tracking-uri", tracking_uri, "--no-progress", "--seed", str(seed), "--device", "cpu",
        "--set", f"epochs={epochs}", "--set", f"norm={case.norm}", "--set", f"batch_size={case.batch_size}",
        *(arg for item in overrides for arg in ("--set", item)), "--nproc", str(case.nproc),
    ]
    if case.nproc > 1:
        command += ["--dist-norm", case.dist_norm]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    started = time.perf_counter()
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    wall = time.perf_counter() - started
    if finished.returncode != 0 or not (out / "metrics.json").is_file():
        tail = (finished.stderr or finished.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {finished.returncode}: {' | '.join(tail)}", "wall_s": wall}
    history = json.loads((out / "history.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    times = step_times_ms(history)
    holdout_scores = metrics["holdout"]["overall"] or {}
    return {
        "step_ms_median": statistics.median(times) if times else None,
        "step_ms_all": times,
        "steps": int(history[-1]["step"]) if history else 0,
        "epochs_run": len(history),
        "train_seconds": sum(float(r["seconds"]) for r in history),
        "wall_s": wall,
        "holdout_macro_f1": holdout_scores.get("macro_f1"),
        "holdout_accuracy": holdout_scores.get("accuracy"),
        "validation_macro_f1": (metrics.get("validation") or {}).get("macro_f1"),
        "distributed": metrics.get("distributed"),
        "command": " ".join(["celltype", *command[3:]]),
    }


def _f(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def table(results: dict[str, Any]) -> str:
    """Markdown table of the finished cases."""
    lines = ["| ranks | --dist-norm | norm | batch/rank | global batch | step ms (median) | cells/s | steps | "
             "train s | wall s | held-out macro-F1 | held-out acc |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    order = sorted(results["cases"].values(), key=lambda r: (r["case"]["batch_size"], r["case"]["norm"] != "batchrenorm",
                                                            r["case"]["nproc"], r["case"]["dist_norm"]))
    for row in order:
        case, res = row["case"], row["result"]
        head = f"| {case['nproc']} | {case['dist_norm']} | {case['norm']} | {case['batch_size']} | " \
               f"{case['nproc'] * case['batch_size']} | "
        if "error" in res:
            lines.append(head + f"failed: {res['error'][:120]} |" + " |" * 7)
            continue
        step = res["step_ms_median"]
        rate = case["nproc"] * case["batch_size"] / (step / 1000.0) if step else None
        lines.append(head + f"{_f(step, 1)} | {_f(rate, 0)} | {res['steps']} | {_f(res['train_seconds'], 1)} | "
                     f"{_f(res['wall_s'], 1)} | {_f(res['holdout_macro_f1'])} | {_f(res['holdout_accuracy'])} |")
    return "\n".join(lines)


def summary(results: dict[str, Any]) -> list[str]:
    """Ratios read off the table: sync over local step time, and N-rank local throughput over 1 rank."""
    rows = {k: r["result"] for k, r in results["cases"].items() if "error" not in r["result"] and r["result"]["step_ms_median"]}
    lines = []
    for key, res in sorted(rows.items()):
        case = results["cases"][key]["case"]
        if case["dist_norm"] != "sync":
            continue
        local = rows.get(Case(case["nproc"], "local", case["norm"], case["batch_size"]).key)
        single = rows.get(Case(1, "-", case["norm"], case["batch_size"]).key)
        if local:
            text = (f"- {case['nproc']} ranks, {case['norm']}, batch {case['batch_size']}/rank: sync step "
                    f"{res['step_ms_median'] / local['step_ms_median']:.1f}× local's")
            if single:
                speed = case["nproc"] * single["step_ms_median"] / local["step_ms_median"]
                text += f"; local processes {speed:.2f}× the cells per second of 1 rank"
            lines.append(text + ".")
    return lines


def section(results: dict[str, Any]) -> str:
    """The distributed section of docs/benchmarks.md."""
    meta = results["meta"]
    ranks = [row["case"]["nproc"] for row in results["cases"].values()] or [1]
    return "\n".join([
        "## Data-parallel training (`celltype train --nproc N`)",
        "",
        "Generated by " + " then ".join(f"`{c}`" for c in meta.get("commands", [meta["command"]]))
        + f" (started {meta['started']}; {meta['machine']}). Data "
        f"`{Path(meta['data']).name}`, held-out batch `{meta['holdout']}`, `--set epochs={meta['epochs']}`"
        + "".join(f", `--set {item}`" for item in meta.get("overrides", [])) + f", seed {meta['seed']}, "
        "every other setting `celltype train`'s default (sampler `lab_homogeneous`); each rank runs one thread "
        "(`OMP_NUM_THREADS=1`), gloo backend on CPU.",
        "",
        f"Machine state: {meta['cpus']} CPU cores shared with other work; load average (1, 5, 15 min) "
        f"{meta['load_before']} before and {meta['load_after']} after the run. With that load every time below "
        "is inflated and noisy, and 2 ranks on 2 busy cores compete for the same cores"
        + (f" ({max(ranks)} ranks oversubscribe them: {max(ranks) // max(1, meta['cpus'] or 1)} processes per core)"
           if max(ranks) > (meta["cpus"] or 1) else "")
        + ", so the step times measure communication overhead and contention here, not the speed-up a machine "
        "with free cores would give.",
        "",
        "Step time: median over epochs 2.. of epoch seconds (including its validation pass) / optimizer steps "
        "in the epoch. `batch/rank` is `batch_size`; one step of N ranks processes N × batch/rank cells, so "
        "an epoch of N ranks has about 1/N of the steps. cells/s = global batch / step time. "
        "`local`: each rank normalizes with its own mini-batch, running statistics averaged every 10 steps "
        "and at epoch ends; `sync`: batch moments all-reduced at every step (one extra all-reduce per norm "
        "layer per step). `train s` is the training loop only; `wall s` is the whole command (torchrun and "
        "imports, data loading, calibration, writing the output directory, publishing to a throw-away SQLite "
        "MLflow store), which dominates at this data size. Held-out scores are one seed on one held-out batch and no seed spread was measured "
        "here, so differences of a few macro-F1 points between rows are not evidence of an effect of the mode; "
        "what the column shows is that every mode still trains a usable model.",
        "",
        table(results),
        "",
        *summary(results),
        "",
        *([f"Not run (time): {', '.join(meta['not_run'])}.", ""] if meta.get("not_run") else []),
        *([f"Extra overrides {', '.join(f'`{o}`' for o in meta['overrides'])}: with the default "
           "`weight_averaging=true` the 2-rank runs tried failed the ranks' replica check (\"ranks disagree on the "
           "trained model\", max difference 0.0325 at 2 ranks, batch 16, 2 epochs) when this was measured.", ""]
          if "weight_averaging=false" in meta.get("overrides", []) else []),
    ])


def main(argv: list[str] | None = None) -> int:
    """Run the grid (skipping finished cases), print the table, optionally write the doc section."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_distributed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 16 only, 3 epochs")
    parser.add_argument("--write", action="store_true", help="replace the distributed section of --doc")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"labeled .h5ad (default {DEFAULT_DATA})")
    parser.add_argument("--holdout", default=DEFAULT_HOLDOUT, help=f"held-out batch (default {DEFAULT_HOLDOUT})")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2], help="rank counts (default 1 2)")
    parser.add_argument("--norms", nargs="+", default=["batchrenorm", "batchnorm"], help="norm layers")
    parser.add_argument("--batch-sizes", type=int, nargs="+", help="per-rank batch sizes (default 16 64; quick: 16)")
    parser.add_argument("--epochs", type=int, help="epochs per run (default 6; quick: 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="extra config override for every case (repeatable), e.g. --set weight_averaging=false")
    parser.add_argument("--budget-s", type=float, help="start no new case after this many seconds")
    parser.add_argument("--case-timeout-s", type=float, default=600.0, help="kill a case after this many seconds")
    parser.add_argument("--results", type=Path, default=ROOT / "outputs" / "benchmarks" / "distributed.json",
                        help="results JSON (resumable)")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md", help="report file")
    args = parser.parse_args(argv)
    if not args.data.is_file():
        print(f"{parser.prog}: error: data file {args.data} not found (give --data)", file=sys.stderr)
        return 2
    batch_sizes = args.batch_sizes or ([16] if args.quick else [16, 64])
    epochs = args.epochs or (3 if args.quick else 6)
    cases = grid(args.nproc, args.norms, batch_sizes, ["local", "sync"])
    results = json.loads(args.results.read_text()) if args.results.is_file() else {"cases": {}, "meta": {}}
    settings = {"data": str(args.data), "holdout": args.holdout, "epochs": epochs, "seed": args.seed,
                "overrides": list(args.overrides)}
    if any(results["meta"].get(k) != v for k, v in settings.items()):
        results = {"cases": {}, "meta": {}}  # other settings: start afresh
    load_before = [round(x, 2) for x in os.getloadavg()]
    command = "python -m benchmarks.bench_distributed " + " ".join(argv if argv is not None else sys.argv[1:])
    commands = [c for c in results["meta"].get("commands", [results["meta"].get("command")]) if c]
    results["meta"] = {
        **results["meta"], **settings,
        "command": command,
        "commands": [*commands, command] if command not in commands else commands,
        "started": results["meta"].get("started") or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
        "cpus": os.cpu_count(),
        "load_before": results["meta"].get("load_before") or load_before,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    previous_keys = set(results["cases"])
    started = time.perf_counter()
    not_run = []
    with tempfile.TemporaryDirectory(prefix="bench_distributed_") as tmp:
        tracking_uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        for case in cases:
            if case.key in results["cases"]:
                continue
            if args.budget_s is not None and time.perf_counter() - started > args.budget_s:
                not_run.append(case.key)
                continue
            try:
                result = run_case(case, args.data, args.holdout, epochs, args.seed, Path(tmp), tracking_uri,
                                  args.case_timeout_s, args.overrides)
            except subprocess.TimeoutExpired:
                result = {"error": f"timed out after {args.case_timeout_s:.0f} s", "wall_s": args.case_timeout_s}
            results["cases"][case.key] = {"case": asdict(case), "result": result}
            results["meta"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
            results["meta"]["not_run"] = []
            args.results.write_text(json.dumps(results, indent=1))
            brief = result.get("error") or f"{_f(result['step_ms_median'], 1)} ms/step, F1 {_f(result['holdout_macro_f1'])}"
            print(f"bench_distributed: {case.key}: {brief} ({result['wall_s']:.0f} s)", flush=True)
    ran = any(key not in previous_keys for key in results["cases"])
    if ran or "load_after" not in results["meta"]:
        results["meta"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
    results["meta"]["not_run"] = not_run
    args.results.write_text(json.dumps(results, indent=1))
    print(table(results))
    if args.write:
        replace_section(args.doc, START, END, section(results))
        print(f"wrote the distributed section of {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
