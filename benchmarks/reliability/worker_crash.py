"""A worker killed mid-request: ``celltype serve --workers N`` keeps answering, and the supervisor replaces it.

With ``--workers`` above 1, uvicorn's supervisor (``uvicorn.supervisors.multiprocess.Multiprocess``) checks
its workers every half second and starts a new one for any that died, whatever killed it (a SIGKILL, a
segmentation fault in a compiled kernel, the OOM killer). The workers share one listening socket, so while
one is gone (and while its replacement loads the model) the others take every new connection; only the
requests the dead worker was answering fail.

The scenario starts a live service with two workers, keeps one worker busy with large requests on one
keep-alive connection, SIGKILLs that worker while a request is in flight, then checks that every request
sent afterwards is answered and that a new worker takes the dead one's place.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks.reliability.harness import start_service
from benchmarks.reliability.inputs import gene_names, predict_body
from benchmarks.reliability.outcome import Outcome, expect, run_scenario


def worker_pids(supervisor_pid: int) -> list[int]:
    """The uvicorn worker processes of a ``celltype serve --workers N`` supervisor (spawned children)."""
    workers = []
    for child in psutil.Process(supervisor_pid).children():
        try:
            if any("spawn_main" in part for part in child.cmdline()):
                workers.append(child.pid)
        except psutil.NoSuchProcess:
            continue
    return sorted(workers)


def _wait_for_workers(supervisor_pid: int, count: int, timeout_s: float, exclude: int | None = None) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = [pid for pid in worker_pids(supervisor_pid) if pid != exclude]
        if len(pids) >= count:
            return pids
        time.sleep(0.2)
    return [pid for pid in worker_pids(supervisor_pid) if pid != exclude]


def _cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _failure_words(answer: str) -> str:
    """How the killed request ended, in words: a transport error is a dropped connection."""
    if answer.isdigit():
        return f"answered {answer}"
    return f"dropped connection: {answer}"


def kill_worker_mid_request(
    bundle: Path, workdir: Path, *, n_genes: int, heavy_cells: int = 5000, probes: int = 40
) -> Outcome:
    """The scenario (see the module docstring); ``bundle`` is a saved bundle over ``gene_names(n_genes)``."""

    def body(numbers: dict[str, Any]) -> str:
        service = start_service(str(bundle), workdir, settings={"CELLTYPE_WORKERS": "2"}, timeout_s=180)
        stop = threading.Event()
        heavy_answers: list[str] = []
        try:
            supervisor = service.process.pid
            workers = _wait_for_workers(supervisor, 2, 120)
            expect(len(workers) == 2, f"expected 2 workers, found {workers}")
            heavy = predict_body(gene_names(n_genes), heavy_cells)
            small = predict_body(gene_names(n_genes), 3)
            headers = {**service.headers, "content-type": "application/json"}

            def keep_busy() -> None:
                with httpx.Client(base_url=service.url, timeout=60) as client:
                    while not stop.is_set():
                        try:
                            heavy_answers.append(str(client.post("/v1/predict", content=heavy, headers=headers).status_code))
                        except httpx.HTTPError as exc:
                            heavy_answers.append(type(exc).__name__)
                            return

            busy_thread = threading.Thread(target=keep_busy, daemon=True)
            before = {pid: _cpu_seconds(pid) for pid in workers}
            busy_thread.start()
            time.sleep(1.5)
            used = {pid: _cpu_seconds(pid) - before[pid] for pid in workers}
            victim = max(used, key=used.get)
            psutil.Process(victim).send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            busy_thread.join(timeout=60)
            answered = 0
            failures: list[str] = []
            with httpx.Client(base_url=service.url, timeout=30) as client:
                for _ in range(probes):
                    try:
                        response = client.post("/v1/predict", content=small, headers=headers)
                        answered += response.status_code == 200
                        if response.status_code != 200:
                            failures.append(str(response.status_code))
                    except httpx.HTTPError as exc:
                        failures.append(type(exc).__name__)
            replacement = _wait_for_workers(supervisor, 2, 120, exclude=victim)
            respawn_s = time.monotonic() - killed_at
            ready = httpx.get(f"{service.url}/health/ready", timeout=30).status_code
            numbers.update(
                n_genes=n_genes,
                heavy_cells=heavy_cells,
                workers_before=workers,
                killed=victim,
                cpu_seconds_in_window={str(pid): round(seconds, 2) for pid, seconds in used.items()},
                heavy_answers=heavy_answers[-3:],
                probes=probes,
                probes_answered=answered,
                probe_failures=failures[:5],
                workers_after=replacement,
                replaced_within_s=round(respawn_s, 1),
            )
            expect(heavy_answers and heavy_answers[-1] not in ("200",), f"the killed request was answered: {heavy_answers[-3:]}")
            expect(answered == probes, f"{probes - answered} of {probes} requests after the kill failed: {failures[:5]}")
            expect(victim not in replacement and len(replacement) == 2, f"no replacement worker: {replacement}")
            expect(ready == 200, f"/health/ready answered {ready} after the replacement")
            expect(service.process.alive(), "the supervisor died")
        finally:
            stop.set()
            service.stop()
        return (
            f"the killed worker's {heavy_cells}-cell request failed ({_failure_words(heavy_answers[-1])}); "
            f"all {probes} requests sent after it were answered 200 by the other worker; the supervisor "
            f"started a replacement within {numbers['replaced_within_s']} s"
        )

    return run_scenario("a worker SIGKILLed mid-request (celltype serve --workers 2)", body)


if __name__ == "__main__":
    import tempfile

    from benchmarks.reliability.inputs import save_random_bundle

    with tempfile.TemporaryDirectory() as directory:
        saved = save_random_bundle(Path(directory) / "bundle", 2000, n_classes=10)
        outcome = kill_worker_mid_request(saved, Path(directory), n_genes=2000)
    print(json.dumps({"name": outcome.name, "passed": outcome.passed, "detail": outcome.detail, **outcome.numbers}, indent=1))
