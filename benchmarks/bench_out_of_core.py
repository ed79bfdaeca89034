"""Out-of-core training benchmark: ``celltype train`` on a synthetic atlas larger than the memory it may use.

The atlas (``--cells``, default 2,000,000 cells x ``--genes`` 20,000 genes, uncompressed CSR raw counts)
is made on the fly in a temporary folder and deleted afterwards. Drawing 2M distinct cells over 20k
genes with :func:`training.synthetic.write_synthetic_h5ad` costs about 1-2 s per 1,024 cells on one
core (dense negative-binomial draws over every gene), so about an hour; the atlas instead repeats a
pool of ``--pool`` distinct cells drawn by it, written lab after lab (``--labs`` labs of equal size,
each cycling through the pool from its own offset) straight into anndata's on-disk CSR layout with
h5py. Reading, gene selection and training cost the same as for distinct cells.

The real command trains on it, ``python -m cli train ATLAS --data-mode {args.data_mode}`` with the default model
and config (``--epochs``, one lab held out), pinned to 2 cores (``taskset``) with the default torch threads; its
peak RSS (sampled from ``/proc`` every 50 ms), the data-mode line it printed, its wall time, the
training cells per second of each epoch (from ``history.json``: training steps plus the epoch's
validation pass) and its CPU time are recorded.

    python -m benchmarks.bench_out_of_core [--cells 2000000] [--genes 20000] [--epochs 1] [--write]

``--write`` replaces the ``bench_out_of_core`` section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from anndata.io import write_elem

from benchmarks.docs_section import replace_section
from training.synthetic import write_synthetic_h5ad

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
SECTION_START = "<!-- bench_out_of_core:start -->"
SECTION_END = "<!-- bench_out_of_core:end -->"
GOAL_CELLS_PER_S = 20_000
GOAL_PEAK_RSS = 3 * 10**9
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def write_atlas(path: Path, pool: Path, n_cells: int, n_labs: int) -> dict[str, float]:
    """Write ``n_cells`` cells cycling through the cells of ``pool``, lab after lab; return sizes."""
    with h5py.File(pool, "r") as source:
        data = source["X/data"][:]
        indices = source["X/indices"][:]
        indptr = source["X/indptr"][:]
        pool_types = source["obs/cell_type/codes"][:]
        categories = [c.decode() if isinstance(c, bytes) else str(c) for c in source["obs/cell_type/categories"][:]]
        var_names = [g.decode() if isinstance(g, bytes) else str(g) for g in source["var/_index"][:]]
    n_pool, n_genes = len(indptr) - 1, len(var_names)
    per_lab = -(-n_cells // n_labs)
    labs, types = np.empty(n_cells, dtype=np.int64), np.empty(n_cells, dtype=np.int64)
    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"], f.attrs["encoding-version"] = "anndata", "0.1.0"
        group = f.create_group("X")
        group.attrs["encoding-type"], group.attrs["encoding-version"] = "csr_matrix", "0.1.0"
        group.attrs["shape"] = np.array([n_cells, n_genes], dtype=np.int64)
        storage = dict(maxshape=(None,), chunks=(1 << 18,))
        out_data = group.create_dataset("data", shape=(0,), dtype=np.float32, **storage)
        out_indices = group.create_dataset("indices", shape=(0,), dtype=np.int32, **storage)
        out_indptr = group.create_dataset("indptr", shape=(n_cells + 1,), dtype=np.int64)
        out_indptr[0] = 0
        row = nnz = 0
        while row < n_cells:
            lab = row // per_lab
            offset = (row - lab * per_lab + lab * 997) % n_pool  # each lab starts at its own place in the pool
            take = min(n_pool - offset, n_cells - row, (lab + 1) * per_lab - row, 65536)
            lo, hi = int(indptr[offset]), int(indptr[offset + take])
            out_data.resize((nnz + hi - lo,))
            out_indices.resize((nnz + hi - lo,))
            out_data[nnz:] = data[lo:hi]
            out_indices[nnz:] = indices[lo:hi]
            out_indptr[row + 1 : row + take + 1] = indptr[offset + 1 : offset + take + 1] - lo + nnz
            labs[row : row + take], types[row : row + take] = lab, pool_types[offset : offset + take]
            row, nnz = row + take, nnz + hi - lo
        obs = pd.DataFrame(
            {
                "cell_type": pd.Categorical.from_codes(types, categories),
                "batch": pd.Categorical.from_codes(labs, [f"lab_{i:02d}" for i in range(n_labs)]),
            },
            index=pd.Index([f"cell_{i}" for i in range(n_cells)]),
        )
        write_elem(f, "obs", obs)
        write_elem(f, "var", pd.DataFrame(index=pd.Index(var_names)))
        for name in ("layers", "obsm", "obsp", "varm", "varp", "uns"):
            write_elem(f, name, {})
    return {"nnz": float(nnz), "file_gib": path.stat().st_size / 2**30}


class TreeRss:
    """Peak resident memory of a process and its children, sampled from ``/proc``."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as handle:
                        parent = int(handle.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(parent, []).append(int(entry))
        pids, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            todo.extend(children.get(pid, []))
        return pids

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in self._tree():
                try:
                    with open(f"/proc/{pid}/statm") as handle:
                        total += int(handle.read().split()[1]) * PAGE_SIZE
                except (OSError, IndexError, ValueError):
                    continue
            self.peak = max(self.peak, total)
            self._stop.wait(0.05)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_training(atlas: Path, work: Path, epochs: int, data_mode: str = "auto") -> dict[str, object]:
    """``celltype train`` on the atlas on 2 cores; its peak RSS, log, wall and CPU time, per-epoch cells/s."""
    out = work / "run"
    command = [
        "taskset", "-c", "0,1", sys.executable, "-m", "cli", "train", str(atlas), "--data-mode", data_mode,
        "--holdout-batch", "lab_00", "--out", str(out), "--no-progress", "--tracking-uri",
        f"sqlite:///{work / 'mlflow.db'}", "--set", f"epochs={epochs}",
    ]
    log = work / "train.log"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with open(log, "w") as handle:
        process = subprocess.Popen(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
        sampler = TreeRss(process.pid)
        code = process.wait()
    wall = time.perf_counter() - started
    peak = sampler.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    text = log.read_text()
    if code != 0:
        raise SystemExit(f"celltype train failed ({code}):\n{text[-3000:]}")
    history = json.loads((out / "history.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    n_train = metrics["training"]["n_cells_train"]
    return {
        "wall_s": wall,
        "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "peak_rss": peak,
        "mode_line": next((line for line in text.splitlines() if line.startswith("training ")), "?"),
        "epochs": [{"epoch": h["epoch"], "seconds": h["seconds"], "cells_per_s": n_train / h["seconds"]}
                   for h in history],
        "n_train": n_train,
        "fit_seconds": metrics["training"]["seconds"],
        "holdout_macro_f1": (metrics["holdout"]["overall"] or {}).get("macro_f1"),
    }


def report(args: argparse.Namespace, sizes: dict[str, float], result: dict[str, object], make_s: float) -> str:
    """The docs section body."""
    epochs = result["epochs"]
    rows = "\n".join(
        f"| {e['epoch']} | {e['seconds']:.0f} | {e['cells_per_s']:,.0f} |" for e in epochs  # type: ignore[union-attr]
    )
    best = max(e["cells_per_s"] for e in epochs)  # type: ignore[union-attr]
    peak = int(result["peak_rss"])  # type: ignore[arg-type]
    return f"""## Out-of-core training (`python -m benchmarks.bench_out_of_core`)

A synthetic atlas of {args.cells:,} cells x {args.genes:,} genes ({sizes['nnz'] / 1e9:.2f} G stored raw counts,
{sizes['file_gib']:.1f} GiB uncompressed CSR; {args.labs} labs stored one after the other, cycling through a pool of
{args.pool:,} distinct cells drawn by `write_synthetic_h5ad`, written in {make_s:.0f} s) trained with the default
model and config (`--set epochs={args.epochs}`, lab_00 held out) by `python -m cli train ATLAS --data-mode {args.data_mode}`,
pinned to 2 cores (`taskset -c 0,1`, default 1 torch thread), on {platform.processor() or platform.machine()} with
{_mem_total_gib():.0f} GiB of memory, shared with other work.

- data-mode line: `{result['mode_line']}`
- peak RSS of the process: **{peak / 1e9:.2f} GB** (goal <= {GOAL_PEAK_RSS / 1e9:.0f} GB:
  {'met' if peak <= GOAL_PEAK_RSS else 'NOT met'})
- whole command: {result['wall_s']:.0f} s wall, {result['cpu_s']:.0f} s CPU (reading the atlas, streamed gene
  selection, input statistics, {args.epochs} epoch(s), norm recalibration, unknown checks, held-out scoring,
  publishing); held-out macro-F1 {result['holdout_macro_f1']}

| epoch | seconds | training cells/s ({result['n_train']:,} cells, incl. the epoch's validation pass) |
|---|---|---|
{rows}

Best epoch: **{best:,.0f} cells/s** (goal >= {GOAL_CELLS_PER_S:,}: {'met' if best >= GOAL_CELLS_PER_S else 'NOT met'}).
"""


def _mem_total_gib() -> float:
    with open("/proc/meminfo") as handle:
        return int(handle.readline().split()[1]) / 2**20


def main(argv: list[str] | None = None) -> int:
    """Make the atlas, train on it, print (and with ``--write`` record) the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=2_000_000)
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--pool", type=int, default=16_384, help="distinct cells the atlas cycles through")
    parser.add_argument("--labs", type=int, default=20)
    parser.add_argument("--library-size", type=float, default=1500.0)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--data-mode", choices=("auto", "memory", "disk"), default="auto")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="celltype-ooc-"))
    try:
        started = time.perf_counter()
        pool = write_synthetic_h5ad(
            work / "pool.h5ad", args.pool, args.genes, n_types=10, n_labs=args.labs, library_size=args.library_size,
        )
        sizes = write_atlas(work / "atlas.h5ad", pool, args.cells, args.labs)
        make_s = time.perf_counter() - started
        print(f"atlas written in {make_s:.0f} s: {sizes}", flush=True)
        result = run_training(work / "atlas.h5ad", work, args.epochs, args.data_mode)
        print(json.dumps(result, indent=1), flush=True)
        body = report(args, sizes, result, make_s)
        print(body)
        if args.write:
            replace_section(DOC, SECTION_START, SECTION_END, body)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
