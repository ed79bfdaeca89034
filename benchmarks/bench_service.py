"""Serving benchmark: ``celltype serve`` against ``mlflow models serve`` on the same model and payloads.

A random 2000-gene model is bundled, logged as the celltype pyfunc into a temporary SQLite MLflow
store and served twice on loopback: by ``celltype serve`` (uvicorn subprocess) and by
``mlflow models serve --env-manager local``. Each scenario (endpoint x cells per request x client
concurrency) runs for a fixed time with pre-encoded bodies; it reports p50/p99 latency, cells per
second and errors, and our cells/s as a multiple of MLflow's on the same payload and concurrency.

    python -m benchmarks.bench_service [--quick] [--write] [--skip-mlflow]
    python -m benchmarks.bench_service --json-reader [--quick] [--write]

``--write`` replaces the ``bench_service`` section of ``docs/benchmarks.md``. ``--json-reader`` instead
measures the compiled JSON reader (:mod:`service.decoding.json_rows`) against orjson alone on the
1000-cell ``/v1/predict`` JSON body: two servers, identical but for the reader, measured in turns; it
writes the ``bench_json_reader`` section.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.docs_section import replace_section

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
SECTION_START = "<!-- bench_service:start -->"
SECTION_END = "<!-- bench_service:end -->"
READER_SECTION_START = "<!-- bench_json_reader:start -->"
READER_SECTION_END = "<!-- bench_json_reader:end -->"
READER_REPEATS = 3
N_GENES = 2000
N_CLASSES = 10
NOVELTY_CELLS = 10_000
"""Cells the model's novelty detector is fitted and calibrated on (half each)."""
CELLS = (1, 100, 1000)
CONCURRENCY = (1, 16)


@dataclass
class Scenario:
    """One measured configuration."""

    server: str
    endpoint: str
    body: str
    cells: int
    concurrency: int


@dataclass
class Result:
    """What one scenario measured."""

    scenario: Scenario
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    cells_per_s: float
    server_cpu_ms: float
    error_examples: list[str]


# --------------------------------------------------------------------------------------------------
# Model and payloads
# --------------------------------------------------------------------------------------------------


def make_bundle(directory: Path) -> tuple[list[str], Path]:
    """A 2000-gene, 10-class classifier with random weights and running statistics, saved as a bundle."""
    import torch

    from benchmarks.bench_scoring import novelty_detector
    from model.bundle import ModelBundle, save_bundle
    from model.classifier import CellTypeClassifier, ClassifierConfig
    from model.preprocessing import Preprocessing, to_model_input

    torch.manual_seed(0)
    genes = [f"GENE{i:04d}" for i in range(N_GENES)]
    model = CellTypeClassifier(ClassifierConfig(n_genes=N_GENES, n_classes=N_CLASSES))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(64, N_GENES))
    model.eval()
    # The default novelty detector, as every trained bundle has; the random model's own labels stand in
    # for the training labels.
    inputs = to_model_input(make_counts(NOVELTY_CELLS, seed=1).astype(np.float32), "counts", 1e4)
    with torch.no_grad():
        labels = model(torch.from_numpy(inputs)).argmax(dim=1).numpy()
    bundle = ModelBundle.from_model(
        model,
        genes=genes,
        classes=[f"type_{i}" for i in range(N_CLASSES)],
        preprocessing=Preprocessing(),
        metadata={"datasets": ["synthetic"], "train_batches": ["bench"]},
        novelty=novelty_detector(model, inputs, labels, N_CLASSES),
    )
    path = directory / "bundle"
    save_bundle(bundle, path)
    return genes, path


def make_counts(n_cells: int, seed: int) -> np.ndarray:
    """Sparse-looking UMI counts (about 80% zeros), cells x genes."""
    rng = np.random.default_rng(seed)
    rates = rng.gamma(0.3, 2.0, size=N_GENES)
    return rng.poisson(rates, size=(n_cells, N_GENES)).astype(np.int64)


def encode_bodies(genes: list[str]) -> dict[tuple[str, int], tuple[str, bytes]]:
    """Pre-encoded request bodies by (body kind, cells): content type and bytes."""
    bodies = {}
    for n_cells in CELLS:
        counts = make_counts(n_cells, seed=n_cells)
        split = {"dataframe_split": {"columns": genes, "data": counts.tolist()}}
        bodies["dataframe_split", n_cells] = ("application/json", json.dumps(split).encode())
        bodies["json", n_cells] = (
            "application/json",
            json.dumps({"genes": genes, "cells": counts.tolist()}).encode(),
        )
        buffer = io.BytesIO()
        np.savez(buffer, genes=np.asarray(genes), X=counts.astype(np.float32))
        bodies["npz", n_cells] = ("application/x-npz", buffer.getvalue())
    return bodies


# --------------------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_ready(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    """Poll ``url`` until it answers 200; raise if the process dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before becoming ready ({url})")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"server not ready within {timeout_s:.0f} s ({url})")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 15 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_celltype(bundle: Path, port: int, workers: int, log: Path) -> subprocess.Popen:
    """``celltype serve`` on loopback (warnings-only logs)."""
    command = [sys.executable, "-m", "cli", "serve", "--model", str(bundle), "--port", str(port)]
    command += ["--workers", str(workers), "--log-level", "warning"]
    env = {**os.environ, "CELLTYPE_DEVICE": "cpu", "CELLTYPE_MAX_QUEUE": "256"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    wait_until_ready(f"http://127.0.0.1:{port}/health/ready", process, 120)
    return process


def register_pyfunc(bundle: Path, directory: Path) -> tuple[str, str]:
    """Log the celltype pyfunc into a fresh SQLite store; return its model URI and the tracking URI."""
    import mlflow

    from model.pyfunc import log_pyfunc

    tracking_uri = f"sqlite:///{directory / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("bench_service")
    with mlflow.start_run():
        info = log_pyfunc(bundle)
    return info.model_uri, tracking_uri


def start_mlflow(model_uri: str, tracking_uri: str, port: int, log: Path) -> subprocess.Popen:
    """``mlflow models serve --env-manager local`` on loopback (uvicorn from this environment)."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    wait_until_ready(f"http://127.0.0.1:{port}/ping", process, 180)
    return process


# --------------------------------------------------------------------------------------------------
# Load generation
# --------------------------------------------------------------------------------------------------


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds used so far by process ``pid`` and all its descendants (Linux ``/proc``)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent and child not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(times.get(member, 0.0) for member in tree)


def run_scenario(
    scenario: Scenario, url: str, content_type: str, body: bytes, duration_s: float, server_pid: int
) -> Result:
    """Send ``body`` from ``scenario.concurrency`` clients for ``duration_s`` seconds (at least 5 requests)."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    headers = {"content-type": content_type}
    deadline_box = [0.0]

    def client() -> None:
        with httpx.Client(timeout=120.0) as http:
            while True:
                with lock:
                    if time.perf_counter() > deadline_box[0] and len(latencies) + len(errors) >= 5:
                        return
                started = time.perf_counter()
                try:
                    response = http.post(url, content=body, headers=headers)
                    problem = None if response.status_code == 200 else f"{response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                elapsed = time.perf_counter() - started
                with lock:
                    (errors.append(problem) if problem else latencies.append(elapsed))

    with httpx.Client(timeout=120.0) as http:  # warm-up, not measured
        for _ in range(2):
            http.post(url, content=body, headers=headers)
    cpu_before = process_tree_cpu_s(server_pid)
    with concurrent.futures.ThreadPoolExecutor(scenario.concurrency) as pool:
        started = time.perf_counter()
        deadline_box[0] = started + duration_s
        list(pool.map(lambda _: client(), range(scenario.concurrency)))
        wall = time.perf_counter() - started
    server_cpu_s = process_tree_cpu_s(server_pid) - cpu_before
    values = np.asarray(latencies) * 1000 if latencies else np.asarray([np.nan])
    return Result(
        scenario=scenario,
        requests=len(latencies) + len(errors),
        errors=len(errors),
        p50_ms=float(np.percentile(values, 50)),
        p99_ms=float(np.percentile(values, 99)),
        cells_per_s=len(latencies) * scenario.cells / wall,
        server_cpu_ms=server_cpu_s * 1000 / max(1, len(latencies) + len(errors)),
        error_examples=sorted(set(errors))[:3],
    )


def measure(
    server: str, process: subprocess.Popen, base_url: str, plan: list[tuple[str, str]], bodies: dict, duration_s: float
) -> list[Result]:
    """Every (endpoint, body) of ``plan`` at every cell count and concurrency."""
    results = []
    for endpoint, body_kind in plan:
        for n_cells in CELLS:
            for concurrency in CONCURRENCY:
                content_type, body = bodies[body_kind, n_cells]
                scenario = Scenario(server, endpoint, body_kind, n_cells, concurrency)
                result = run_scenario(scenario, base_url + endpoint, content_type, body, duration_s, process.pid)
                print(format_row(result, None, None), flush=True)
                results.append(result)
    return results


# --------------------------------------------------------------------------------------------------
# Compiled JSON reader vs orjson alone
# --------------------------------------------------------------------------------------------------


def serve_with_orjson_reader(argv: list[str]) -> None:
    """``celltype serve`` with ``/v1/predict`` JSON bodies read by orjson alone (the strict reader).

    The strict reader is what remains without the compiled one: ``orjson.loads`` and a type check of
    every value in Python. Run in the server's own process (see :func:`start_orjson_celltype`).
    """
    import service.decoding.predict as predict_decoding
    from cli.main import main as celltype_main

    predict_decoding.read_json = strict_read_json
    sys.exit(celltype_main(argv))


def start_orjson_celltype(bundle: Path, port: int, log: Path) -> subprocess.Popen:
    """Like :func:`start_celltype` (one worker), with the JSON body read by orjson alone."""
    argv = ["serve", "--model", str(bundle), "--port", str(port), "--workers", "1", "--log-level", "warning"]
    code = f"from benchmarks.bench_service import serve_with_orjson_reader; serve_with_orjson_reader({argv!r})"
    env = {**os.environ, "CELLTYPE_DEVICE": "cpu", "CELLTYPE_MAX_QUEUE": "256"}
    process = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    wait_until_ready(f"http://127.0.0.1:{port}/health/ready", process, 120)
    return process


def strict_read_json(body: bytes, decode: Callable[[Any], Any], rows_at: Any = None) -> Any:
    """:func:`service.decoding.json_body.read_json` without the compiled reader: orjson alone, values checked in Python."""
    from service.decoding.json_body import JsonBody

    return decode(JsonBody(body, strict=True))


def decode_only_ms(body: bytes, repeats: int = 5) -> dict[str, float]:
    """Median CPU ms to decode ``body`` in this process, by reader ("compiled", "orjson")."""
    import service.decoding.predict as predict_decoding

    predict_decoding.warm_up()
    compiled = predict_decoding.read_json
    timings = {}
    for name, reader in (("compiled", compiled), ("orjson", strict_read_json)):
        predict_decoding.read_json = reader
        try:
            samples = []
            for _ in range(repeats + 1):
                started = time.process_time()
                predict_decoding.decode_predict_json(body, 10_000)
                samples.append((time.process_time() - started) * 1000)
        finally:
            predict_decoding.read_json = compiled
        timings[name] = float(np.median(samples[1:]))
    return timings


def measure_json_reader(bundle: Path, body: bytes, directory: Path, duration_s: float) -> list[Result]:
    """The 1000-cell JSON body at 1 client on both servers, in turns, :data:`READER_REPEATS` times each."""
    compiled = start_celltype(bundle, compiled_port := free_port(), 1, directory / "compiled.log")
    try:
        strict = start_orjson_celltype(bundle, strict_port := free_port(), directory / "orjson.log")
        try:
            results = []
            for _ in range(READER_REPEATS):
                for server, process, port in (("compiled", compiled, compiled_port), ("orjson", strict, strict_port)):
                    scenario = Scenario(server, "/v1/predict", "json", 1000, 1)
                    url = f"http://127.0.0.1:{port}/v1/predict"
                    result = run_scenario(scenario, url, "application/json", body, duration_s, process.pid)
                    print(format_row(result, None, None), flush=True)
                    results.append(result)
            return results
        finally:
            stop(strict)
    finally:
        stop(compiled)


def reader_report(results: list[Result], decode_ms: dict[str, float], load: tuple[float, float]) -> str:
    """The markdown section of the JSON reader comparison, with the verdict."""
    by_reader = {name: [r for r in results if r.scenario.server == name] for name in ("compiled", "orjson")}
    cells = {name: float(np.median([r.cells_per_s for r in runs])) for name, runs in by_reader.items()}
    cpu = {name: float(np.median([r.server_cpu_ms for r in runs])) for name, runs in by_reader.items()}
    gain = cells["compiled"] / cells["orjson"] - 1 if cells["orjson"] else float("nan")
    rows = [
        f"| {name} | {len(by_reader[name])} | {', '.join(f'{r.cells_per_s:,.0f}' for r in by_reader[name])} | "
        f"{cells[name]:,.0f} | {cpu[name]:.1f} | {decode_ms[name]:.1f} |"
        for name in ("compiled", "orjson")
    ]
    verdict = "keeps its place" if gain >= 0.15 else "does not pay for itself"
    return "\n".join(
        [
            "## JSON reader: compiled (numba) vs orjson alone",
            "",
            f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} CPU cores ({platform.machine()}, Python "
            f"{platform.python_version()}); the model and body of the serving benchmark: `/v1/predict`, 1000 cells x "
            f"{N_GENES} genes of raw counts as JSON rows (6 MB), 1 client, over loopback. Two `celltype serve` "
            "processes differ only in the reader: *compiled* = the service as shipped (numba reads the rows into "
            "float32, simdjson the rest); *orjson* = `orjson.loads` and a check of every value in Python (the "
            "strict reader, what is left without the compiled one). They are measured in turns, "
            f"{READER_REPEATS} runs each. `server CPU ms/request` is the CPU time of the server process per "
            "request; `decode CPU ms` is decoding alone, in the benchmark's process. 1-minute load average: "
            f"{load[0]:.1f} at the start, {load[1]:.1f} at the end. Command: "
            "`python -m benchmarks.bench_service --json-reader --write`.",
            "",
            "| reader | runs | cells/s per run | cells/s (median) | server CPU ms/request (median) | decode CPU ms |",
            "|---|---:|---|---:|---:|---:|",
            *rows,
            "",
            f"End to end the compiled reader gives {gain:+.0%} cells/s and "
            f"{cpu['orjson'] / cpu['compiled']:.1f}x less server CPU per request; the bar was +15%, so it {verdict}.",
        ]
    ) + "\n"


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------

HEADER = (
    "| server | endpoint | body | cells/request | clients | requests | errors | p50 ms | p99 ms | cells/s "
    "| x mlflow | server CPU ms/request | x mlflow (CPU) |\n"
    "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def format_row(result: Result, ratio: float | None, cpu_ratio: float | None) -> str:
    """One markdown table row."""
    s = result.scenario
    ratio_text = f"{ratio:.1f}x" if ratio is not None else ""
    cpu_text = f"{cpu_ratio:.1f}x" if cpu_ratio is not None else ""
    return (
        f"| {s.server} | {s.endpoint} | {s.body} | {s.cells} | {s.concurrency} | {result.requests} | "
        f"{result.errors} | {result.p50_ms:.1f} | {result.p99_ms:.1f} | {result.cells_per_s:,.0f} | {ratio_text} | "
        f"{result.server_cpu_ms:.1f} | {cpu_text} |"
    )


def report(results: list[Result], notes: list[str], load: tuple[float, float]) -> str:
    """The markdown section: setup, table, goals."""
    baseline = {(r.scenario.cells, r.scenario.concurrency): r for r in results if r.scenario.server == "mlflow"}
    rows = []
    for result in results:
        reference = baseline.get((result.scenario.cells, result.scenario.concurrency))
        if reference is None or result.scenario.server == "mlflow":
            rows.append(format_row(result, None, None))
            continue
        ratio = result.cells_per_s / reference.cells_per_s if reference.cells_per_s else None
        cpu_ratio = reference.server_cpu_ms / result.server_cpu_ms if result.server_cpu_ms else None
        rows.append(format_row(result, ratio, cpu_ratio))
    lines = [
        "## Serving: `celltype serve` vs `mlflow models serve`",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} CPU cores ({platform.machine()}, "
        f"Python {platform.python_version()}), client and server on the same machine over loopback. "
        f"Model: {N_GENES} genes, hidden 256-128, {N_CLASSES} classes, random weights, with the default novelty "
        "detector (`input_pca`, which every bundle `celltype train` writes has); bodies are raw "
        "counts (about 80% zeros), pre-encoded. `x mlflow` = cells/s over MLflow's on the same cells per "
        "request and clients (MLflow answers `dataframe_split` only). `server CPU ms/request` is the CPU "
        "time of the server's process tree per request, which does not depend on what else the machine "
        "runs; `x mlflow (CPU)` compares it. 1-minute load average of the machine: "
        f"{load[0]:.1f} at the start, {load[1]:.1f} at the end (other work shares the cores; latencies and "
        "cells/s suffer from it, CPU per request much less). Command: "
        "`python -m benchmarks.bench_service --write`.",
        "",
        HEADER,
        *rows,
        "",
        *notes,
    ]
    return "\n".join(lines).rstrip() + "\n"


def goal_notes(results: list[Result], mlflow_ran: bool) -> list[str]:
    """Lines stating whether each goal was met."""
    ours = [r for r in results if r.scenario.server == "celltype"]
    theirs = {r.scenario.concurrency: r for r in results if r.scenario.server == "mlflow" and r.scenario.cells == 1000}
    notes = ["Goals (2 cores):"]
    for result in (r for r in ours if r.scenario.body == "json" and r.scenario.cells == 1000):
        clients = result.scenario.concurrency
        reference = theirs.get(clients)
        if reference is not None:
            notes.append(
                f"- 1000-cell JSON, {clients} client(s): {result.cells_per_s:,.0f} cells/s = "
                f"{result.cells_per_s / reference.cells_per_s:.1f}x MLflow's {reference.cells_per_s:,.0f} "
                f"(server CPU per request {result.server_cpu_ms:.0f} ms vs {reference.server_cpu_ms:.0f} ms = "
                f"{reference.server_cpu_ms / result.server_cpu_ms:.1f}x less); goal >= 20x."
            )
        else:
            notes.append(
                f"- 1000-cell JSON, {clients} client(s): {result.cells_per_s:,.0f} cells/s = "
                f"{result.cells_per_s / 1307:.1f}x the 1,307 cells/s REFERENCE.md reports for MLflow (not run here); "
                "goal >= 20x."
            )
    single = [r for r in ours if r.scenario.cells == 1 and r.scenario.concurrency == 1]
    if single:
        notes.append(
            "- 1-cell p99 at 1 client: "
            + ", ".join(f"{r.scenario.endpoint} {r.scenario.body} {r.p99_ms:.1f} ms" for r in single)
            + "; goal < 10 ms."
        )
    crowded = [r for r in ours if r.scenario.concurrency == 16]
    notes.append(f"- Errors under 16 clients: {sum(r.errors for r in crowded)} of {sum(r.requests for r in crowded)}; goal 0.")
    if not mlflow_ran:
        notes.append("- MLflow was not run (--skip-mlflow).")
    for result in results:
        if result.error_examples:
            notes.append(f"- Errors in {result.scenario}: {result.error_examples}")
    return notes


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table; with ``--write`` update docs/benchmarks.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 s per scenario instead of 8 s")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--skip-mlflow", action="store_true", help="measure celltype serve only")
    parser.add_argument("--workers", type=int, default=1, help="celltype serve --workers (default 1)")
    parser.add_argument("--json-reader", action="store_true", help="compare the compiled JSON reader with orjson alone")
    args = parser.parse_args(argv)
    duration_s = 2.0 if args.quick else 8.0
    load_at_start = os.getloadavg()[0]
    if args.json_reader:
        return json_reader_main(duration_s, load_at_start, args.write)

    with tempfile.TemporaryDirectory(prefix="celltype-bench-") as scratch:
        directory = Path(scratch)
        genes, bundle = make_bundle(directory)
        bodies = encode_bodies(genes)
        results: list[Result] = []
        print(HEADER, flush=True)
        ours = start_celltype(bundle, port := free_port(), args.workers, directory / "celltype.log")
        try:
            plan = [("/v1/predict", "json"), ("/v1/predict", "npz"), ("/invocations", "dataframe_split")]
            results += measure("celltype", ours, f"http://127.0.0.1:{port}", plan, bodies, duration_s)
        finally:
            stop(ours)
        if not args.skip_mlflow:
            model_uri, tracking_uri = register_pyfunc(bundle, directory)
            theirs = start_mlflow(model_uri, tracking_uri, port := free_port(), directory / "mlflow.log")
            try:
                plan = [("/invocations", "dataframe_split")]
                results += measure("mlflow", theirs, f"http://127.0.0.1:{port}", plan, bodies, duration_s)
            finally:
                stop(theirs)
    text = report(results, goal_notes(results, not args.skip_mlflow), (load_at_start, os.getloadavg()[0]))
    print()
    print(text)
    if args.write:
        replace_section(DOC, SECTION_START, SECTION_END, text)
        print(f"wrote {DOC.relative_to(ROOT)}")
    return 0



def json_reader_main(duration_s: float, load_at_start: float, write: bool) -> int:
    """``--json-reader``: run :func:`measure_json_reader`, print the section, with ``write`` update the doc."""
    with tempfile.TemporaryDirectory(prefix="celltype-bench-") as scratch:
        directory = Path(scratch)
        genes, bundle = make_bundle(directory)
        body = json.dumps({"genes": genes, "cells": make_counts(1000, seed=1000).tolist()}).encode()
        decode_ms = decode_only_ms(body)
        print(HEADER, flush=True)
        results = measure_json_reader(bundle, body, directory, duration_s)
    text = reader_report(results, decode_ms, (load_at_start, os.getloadavg()[0]))
    print()
    print(text)
    if write:
        replace_section(DOC, READER_SECTION_START, READER_SECTION_END, text)
        print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
