"""The GPU benchmark: one prepared script (under 10 minutes on one GPU) for the "GPU" section of docs/benchmarks.md.

Each item is measured after a warm-up, with the device synchronized around every timed region, and
against its CPU baseline in the same run:

1. **BatchRenorm1d vs cuDNN BatchNorm1d**: a whole training step (AdamW, cross-entropy) of the MLP
   2000-256-128-10 of :mod:`benchmarks.bench_batchrenorm`, at several batch sizes, in float32 and under
   bfloat16 autocast (what training uses on CUDA); medians of interleaved iterations. Goal: ≤ 1.1×.
2. **Training cells/s**: ``celltype train`` (defaults, 2000 genes) on synthetic raw counts, on the GPU at
   the default batch of 64 and at 1024, and on the CPU; cells/s = batch × steps of an epoch / its seconds
   (median over epochs 2.., from ``history.json``, validation pass included).
3. **Scoring cells/s end to end from .h5ad**: ``celltype score FILE.h5ad --out OUT.parquet`` on a synthetic
   file of ``--score-cells`` cells (distinct 100,000-cell blocks repeated) with ``--device cuda`` and
   ``--device cpu``; wall time of the whole command, and the command's own scoring rate. Goal: ≥ 500,000
   cells/s end to end.
4. **Serving**: ``celltype serve`` with ``CELLTYPE_DEVICE=cuda`` and ``cpu``, p50/p99 latency and cells/s
   from 1 and 16 clients (the load generator of :mod:`benchmarks.bench_service`).

    python -m benchmarks.bench_gpu [--write] [--score-cells 2000000]

Without CUDA it refuses to run (exit code 2) and writes nothing. ``--write`` replaces the ``bench_gpu``
section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from benchmarks import bench_batchrenorm, bench_service
from benchmarks.docs_section import replace_section

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
SECTION_START = "<!-- bench_gpu:start -->"
SECTION_END = "<!-- bench_gpu:end -->"
N_GENES = 2000
NORM_GOAL = 1.1
SCORING_GOAL = 500_000
COMMAND_TIMEOUT_S = 240
UNREACHABLE_TRACKING_URI = "http://127.0.0.1:9"
"""Training runs publish nowhere: the registry is refused at once and ``celltype train`` exits with
:data:`EXIT_NOT_PUBLISHED` after writing the bundle."""
EXIT_NOT_PUBLISHED = 3


@dataclass(frozen=True)
class Plan:
    """Sizes of one run (the defaults fit in 10 minutes on one GPU; tests use tiny ones on the CPU)."""

    norm_batches: tuple[int, ...] = (256, 1024, 4096)
    norm_repeats: int = 200
    train_cells: int = 120_000
    """On CUDA the training inputs of up to 1 GiB are kept on the device: 108,000 x 2000 float32 fit."""
    train_cells_cpu: int = 50_000
    train_epochs: int = 3
    train_batches: tuple[int, ...] = (64, 1024)
    score_cells: int = 2_000_000
    score_block_cells: int = 100_000
    """Distinct cells of the scoring file, repeated up to ``score_cells`` (throughput ignores the values)."""
    serve_cells: tuple[int, ...] = (1, 1000, 10_000)
    serve_clients: tuple[int, ...] = (1, 16)
    serve_seconds: float = 5.0


@dataclass
class Report:
    """Everything measured, as markdown lines per section."""

    norm: list[str] = field(default_factory=list)
    training: list[str] = field(default_factory=list)
    scoring: list[str] = field(default_factory=list)
    serving: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def synchronizer(device: torch.device) -> Callable[[], None]:
    """``torch.cuda.synchronize`` on CUDA, nothing on the CPU."""
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


# -- 1. BatchRenorm1d vs BatchNorm1d ---------------------------------------------------------------


def norm_step_times(device: torch.device, batch: int, dtype: torch.dtype | None, repeats: int) -> tuple[float, float]:
    """Median seconds of one MLP training step with BatchNorm1d and with BatchRenorm1d (same weights, data)."""
    gen = torch.Generator().manual_seed(0)
    sizes = bench_batchrenorm.MLP_SIZES
    x = torch.randn(batch, sizes[0], generator=gen).to(device)
    y = torch.randint(0, sizes[-1], (batch,), generator=gen).to(device)
    torch.manual_seed(0)
    bn = bench_batchrenorm.mlp(torch.nn.BatchNorm1d).to(device).train()
    torch.manual_seed(0)
    brn = bench_batchrenorm.mlp(
        lambda width: bench_batchrenorm.BatchRenorm1d(width, r_max=bench_batchrenorm.R_MAX, d_max=bench_batchrenorm.D_MAX)
    ).to(device).train()

    def step(model: torch.nn.Module) -> Callable[[], None]:
        inner = bench_batchrenorm.train_step(model, x, y)
        if dtype is None:
            return inner

        def autocast_step() -> None:
            with torch.autocast(device.type, dtype=dtype):
                inner()

        return autocast_step

    return bench_batchrenorm.interleaved_medians(step(bn), step(brn), repeats, max(10, repeats // 5), synchronizer(device))


def bench_norm(device: torch.device, plan: Plan, report: Report) -> None:
    """Item 1 on ``device`` and on the CPU (float32, the smallest batch, as the baseline)."""
    report.norm += [
        "| device | precision | batch | BatchNorm1d (µs) | BatchRenorm1d (µs) | ratio | goal | met |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    cases = [(device, dtype, batch) for dtype in (None, torch.bfloat16) for batch in plan.norm_batches]
    cases.append((torch.device("cpu"), None, plan.norm_batches[0]))
    for where, dtype, batch in cases:
        if where.type == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
            continue
        bn_s, brn_s = norm_step_times(where, batch, dtype, plan.norm_repeats)
        ratio = brn_s / bn_s
        goal = f"≤{NORM_GOAL:.2f}x" if where.type == "cuda" else "(baseline)"
        met = ("yes" if ratio <= NORM_GOAL else "NO") if where.type == "cuda" else ""
        precision = "float32" if dtype is None else "bfloat16 autocast"
        report.norm.append(
            f"| {where.type} | {precision} | {batch} | {bn_s * 1e6:,.1f} | {brn_s * 1e6:,.1f} | {ratio:.2f}x | {goal} | {met} |"
        )
        print(report.norm[-1], flush=True)


# -- data --------------------------------------------------------------------------------------------


def synthetic(path: Path, n_cells: int) -> Path:
    """Synthetic labeled raw counts (2000 genes, 10 types, 3 labs) written to ``path``."""
    from training.synthetic import write_synthetic_h5ad

    return write_synthetic_h5ad(path, n_cells, n_genes=N_GENES, n_types=10, seed=0)


def tiled_h5ad(block: Path, path: Path, n_cells: int) -> Path:
    """A CSR ``.h5ad`` of ``n_cells`` cells: the cells of ``block`` repeated (cell names made unique)."""
    import h5py
    import pandas as pd
    from anndata.io import read_elem, write_elem

    with h5py.File(block, "r") as source:
        data, indices, indptr = (source["X"][name][:] for name in ("data", "indices", "indptr"))
        var = read_elem(source["var"])
    rows = len(indptr) - 1
    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"], f.attrs["encoding-version"] = "anndata", "0.1.0"
        group = f.create_group("X")
        group.attrs["encoding-type"], group.attrs["encoding-version"] = "csr_matrix", "0.1.0"
        group.attrs["shape"] = np.array([n_cells, var.shape[0]], dtype=np.int64)
        repeats = -(-n_cells // rows)
        counts = np.tile(np.diff(indptr), repeats)[:n_cells]
        total = int(counts.sum())
        out_data = group.create_dataset("data", shape=(total,), dtype=data.dtype)
        out_indices = group.create_dataset("indices", shape=(total,), dtype=indices.dtype)
        offset = 0
        for start in range(0, n_cells, rows):
            take = min(rows, n_cells - start)
            end = int(indptr[take])
            out_data[offset : offset + end] = data[:end]
            out_indices[offset : offset + end] = indices[:end]
            offset += end
        group.create_dataset("indptr", data=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
        write_elem(f, "obs", pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)]))
        write_elem(f, "var", var)
        for name in ("uns", "layers", "obsm", "obsp", "varm", "varp"):
            write_elem(f, name, {})
    return path


def run_command(command: list[str], env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,)) -> tuple[float, str]:
    """Run ``command`` from the repository root; (wall seconds, stdout). Raises with stderr's end unless
    its exit code is in ``ok``."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    wall = time.perf_counter() - started
    if done.returncode not in ok:
        raise RuntimeError(f"{' '.join(command[:6])} ... failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall, done.stdout


# -- 2. training -------------------------------------------------------------------------------------


def training_rate(data: Path, out: Path, device: str, batch: int, epochs: int) -> tuple[float, int]:
    """``celltype train`` on ``device``: (median cells/s over epochs 2.., steps per epoch)."""
    command = [
        sys.executable, "-m", "cli", "train", str(data), "--out", str(out), "--device", device, "--no-progress",
        "--tracking-uri", UNREACHABLE_TRACKING_URI, "--set", f"epochs={epochs}",
        "--set", f"batch_size={batch}", "--set", "sampler=shuffled",
    ]  # fmt: skip
    run_command(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, ok=(EXIT_NOT_PUBLISHED,))
    history = json.loads((out / "history.json").read_text())
    steps = [b["step"] - a["step"] for a, b in zip(history, history[1:], strict=False)]
    rates = [s * batch / record["seconds"] for s, record in zip(steps, history[1:], strict=True)]
    return statistics.median(rates), steps[0]


def bench_training(device: torch.device, plan: Plan, workdir: Path, report: Report) -> None:
    """Item 2 on ``device`` at each batch size, and on the CPU at the first one."""
    report.training += [
        "| device | cells | batch | steps/epoch | cells/s (median, epochs 2..) | × CPU |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    big = synthetic(workdir / "train.h5ad", plan.train_cells)
    small = synthetic(workdir / "train_cpu.h5ad", plan.train_cells_cpu)
    cpu_rate, cpu_steps = training_rate(small, workdir / "train_cpu", "cpu", plan.train_batches[0], plan.train_epochs)
    rows = []
    for batch in plan.train_batches:
        rate, steps = training_rate(big, workdir / f"train_{device.type}_{batch}", device.type, batch, plan.train_epochs)
        rows.append(f"| {device.type} | {plan.train_cells:,} | {batch} | {steps} | {rate:,.0f} | {rate / cpu_rate:.1f}x |")
        print(rows[-1], flush=True)
    rows.append(f"| cpu | {plan.train_cells_cpu:,} | {plan.train_batches[0]} | {cpu_steps} | {cpu_rate:,.0f} | 1.0x |")
    report.training += rows


# -- 3. scoring --------------------------------------------------------------------------------------


def scoring_run(data: Path, bundle: Path, out: Path, device: str) -> tuple[float, float | None]:
    """``celltype score`` end to end: (wall seconds, the command's own cells/s)."""
    command = [sys.executable, "-m", "cli", "score", str(data), "--model", str(bundle), "--out", str(out),
               "--device", device, "--no-progress"]
    wall, stdout = run_command(command)
    match = re.search(r"\(([\d,]+) cells/s\)", stdout)
    out.unlink(missing_ok=True)
    return wall, float(match.group(1).replace(",", "")) if match else None


def bench_scoring(device: torch.device, plan: Plan, workdir: Path, report: Report) -> None:
    """Item 3: the same file scored on ``device`` (twice: the first run warms the page cache) and on the CPU."""
    from benchmarks.bench_scoring import make_bundle

    block = synthetic(workdir / "score_block.h5ad", min(plan.score_block_cells, plan.score_cells))
    data = tiled_h5ad(block, workdir / "score.h5ad", plan.score_cells)
    bundle = make_bundle(block, workdir)
    report.scoring += [
        "| device | cells | wall s | cells/s end to end | cells/s scoring (command's summary) | × CPU (end to end) | goal | met |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    scoring_run(data, bundle, workdir / "warm.parquet", device.type)
    cpu_wall, cpu_rate = scoring_run(data, bundle, workdir / "cpu.parquet", "cpu")
    wall, rate = scoring_run(data, bundle, workdir / "gpu.parquet", device.type)
    for where, seconds, own in ((device.type, wall, rate), ("cpu", cpu_wall, cpu_rate)):
        end_to_end = plan.score_cells / seconds
        goal, met = (f"≥{SCORING_GOAL:,}", "yes" if end_to_end >= SCORING_GOAL else "NO") if where != "cpu" else ("", "")
        report.scoring.append(
            f"| {where} | {plan.score_cells:,} | {seconds:.1f} | {end_to_end:,.0f} | "
            f"{f'{own:,.0f}' if own else 'n/a'} | {end_to_end / (plan.score_cells / cpu_wall):.1f}x | {goal} | {met} |"
        )
        print(report.scoring[-1], flush=True)


# -- 4. serving --------------------------------------------------------------------------------------


def npz_body(genes: list[str], n_cells: int) -> bytes:
    """An ``application/x-npz`` body of ``n_cells`` raw-count cells."""
    import io

    buffer = io.BytesIO()
    np.savez(buffer, genes=np.asarray(genes), X=bench_service.make_counts(n_cells, seed=n_cells).astype(np.float32))
    return buffer.getvalue()


def bench_serving(device: torch.device, plan: Plan, workdir: Path, report: Report) -> None:
    """Item 4: ``celltype serve`` on ``device`` and on the CPU, npz bodies to ``/v1/predict``."""
    genes, bundle = bench_service.make_bundle(workdir)
    bodies = {n: npz_body(genes, n) for n in plan.serve_cells}
    report.serving += [
        "| device | cells/request | clients | requests | errors | p50 ms | p99 ms | cells/s | × CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    results: dict[tuple[str, int, int], bench_service.Result] = {}
    for role, where in (("baseline", "cpu"), ("measured", device.type)):
        port = bench_service.free_port()
        command = [sys.executable, "-m", "cli", "serve", "--model", str(bundle), "--port", str(port),
                   "--log-level", "warning"]
        env = {**os.environ, "CELLTYPE_DEVICE": where, "CELLTYPE_MAX_QUEUE": "256"}
        with open(workdir / f"serve_{role}.log", "wb") as log:
            server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            bench_service.wait_until_ready(f"{base}/health/ready", server, 120)
            for n_cells in plan.serve_cells:
                for clients in plan.serve_clients:
                    scenario = bench_service.Scenario(where, "/v1/predict", "npz", n_cells, clients)
                    results[role, n_cells, clients] = bench_service.run_scenario(
                        scenario, f"{base}/v1/predict", "application/x-npz", bodies[n_cells], plan.serve_seconds,
                        server.pid,
                    )
        finally:
            bench_service.stop(server)
    for n_cells in plan.serve_cells:
        for clients in plan.serve_clients:
            baseline = results["baseline", n_cells, clients]
            for row in (results["measured", n_cells, clients], baseline):
                ratio = f"{row.cells_per_s / baseline.cells_per_s:.1f}x" if baseline.cells_per_s else "n/a"
                report.serving.append(
                    f"| {row.scenario.server} | {n_cells:,} | {clients} | {row.requests} | {row.errors} | "
                    f"{row.p50_ms:.1f} | {row.p99_ms:.1f} | {row.cells_per_s:,.0f} | {ratio} |"
                )
                print(report.serving[-1], flush=True)


# -- the report --------------------------------------------------------------------------------------


def render(report: Report, device: torch.device, seconds: float, plan: Plan) -> str:
    """The markdown section."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none (CPU only)"
    lines = [
        "## GPU",
        "",
        f"Measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC by `python -m benchmarks.bench_gpu --write` "
        f"in {seconds / 60:.1f} min. GPU: {gpu}; {os.cpu_count()} CPU cores ({platform.machine()}), torch "
        f"{torch.__version__}, Python {platform.python_version()}. Every time is taken after a warm-up with the "
        "device synchronized; each GPU figure has its CPU baseline from the same run.",
        "",
        "### BatchRenorm1d vs cuDNN BatchNorm1d: MLP training step",
        "",
        f"MLP {'-'.join(map(str, bench_batchrenorm.MLP_SIZES))} (Linear → norm → ReLU → Dropout), AdamW, "
        f"cross-entropy; BatchRenorm1d(r_max={bench_batchrenorm.R_MAX}, d_max={bench_batchrenorm.D_MAX}); medians "
        f"of {plan.norm_repeats} interleaved steps.",
        "",
        *report.norm,
        "",
        "### Training (`celltype train`)",
        "",
        f"Synthetic raw counts, {N_GENES} genes, 10 types, 3 labs; training defaults but `epochs={plan.train_epochs}`, "
        "`sampler=shuffled` and the batch size shown; the CPU runs with `cpu_threads=1` (the default) on a "
        "smaller file (cells/s does not depend on the file size). cells/s = batch × steps / epoch seconds "
        "(validation pass included), median over epochs 2..",
        "",
        *report.training,
        "",
        "### Scoring (`celltype score`, end to end from .h5ad)",
        "",
        f"Uncompressed CSR raw counts, {N_GENES} genes ({plan.score_block_cells:,} distinct cells repeated), 2000-256-128 BRN "
        "MLP with random weights, parquet output; wall time of the whole command (start, model load, reading, "
        "checks, scoring, writing); the file was read once before (page cache warm).",
        "",
        *report.scoring,
        "",
        "### Serving (`celltype serve`, `/v1/predict`, npz bodies)",
        "",
        f"2000-gene model, hidden 256-128, 10 classes; one server process; {plan.serve_seconds:.0f} s per scenario "
        "after 2 warm-up requests; client on the same machine over loopback.",
        "",
        *report.serving,
    ]
    if report.notes:
        lines += ["", *report.notes]
    return "\n".join(lines) + "\n"


def run(device: torch.device, plan: Plan) -> str:
    """Measure every item on ``device`` with ``plan``'s sizes; return the markdown section."""
    started = time.perf_counter()
    report = Report()
    with tempfile.TemporaryDirectory(prefix="celltype-bench-gpu-") as scratch:
        workdir = Path(scratch)
        items: list[tuple[str, Callable[[torch.device, Plan, Path, Report], None]]] = [
            ("training", bench_training), ("scoring", bench_scoring), ("serving", bench_serving),
        ]
        bench_norm(device, plan, report)
        print(f"norm: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        for name, item in items:
            item_started = time.perf_counter()
            (workdir / name).mkdir()
            item(device, plan, workdir / name, report)
            print(f"{name}: {time.perf_counter() - item_started:.0f} s", file=sys.stderr, flush=True)
    return render(report, device, time.perf_counter() - started, plan)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark on the GPU; print the section; with ``--write`` update docs/benchmarks.md."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="replace the GPU section of docs/benchmarks.md")
    parser.add_argument("--score-cells", type=int, default=Plan.score_cells, help="cells of the scoring file")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "python -m benchmarks.bench_gpu: error: no CUDA GPU (torch.cuda.is_available() is False); run it on a "
            "machine with a GPU and a CUDA build of torch. Nothing was measured or written.",
            file=sys.stderr,
        )
        return 2
    if args.score_cells < 1:
        parser.error(f"--score-cells must be at least 1 (got {args.score_cells})")
    text = run(torch.device("cuda"), Plan(score_cells=args.score_cells))
    print(text)
    if args.write:
        replace_section(DOC, SECTION_START, SECTION_END, text)
        print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
