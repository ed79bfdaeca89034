"""SIGTERM to ``celltype serve`` with requests in flight: every one gets its full answer."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.reliability.harness import Service, start_service
from benchmarks.reliability.inputs import gene_names, predict_body, save_random_bundle
from benchmarks.reliability.outcome import Outcome, expect, run_scenario


def graceful_shutdown(
    workdir: Path, *, n_requests: int = 4, n_cells: int = 4000, n_genes: int = 2000
) -> Outcome:
    """SIGTERM a service with ``n_requests`` slow requests in flight: every one must get its full answer."""

    def body(numbers: dict[str, Any]) -> str:
        bundle = save_random_bundle(workdir / "sigterm-bundle", n_genes, seed=6, hidden=(2048, 2048))
        service = start_service(str(bundle), workdir, settings={"CELLTYPE_MAX_CONCURRENCY": "2"})
        payload = predict_body(gene_names(n_genes), n_cells, seed=7)
        results: list[tuple[int | str, int, float]] = []
        lock = threading.Lock()

        def send() -> None:
            try:
                answer = httpx.post(
                    f"{service.url}/v1/predict",
                    content=payload,
                    headers={"Content-Type": "application/json"},
                    timeout=120,
                )
                outcome: tuple[int | str, int, float] = (
                    answer.status_code,
                    len(answer.json().get("predictions", [])) if answer.status_code == 200 else 0,
                    time.monotonic(),
                )
            except (httpx.HTTPError, ValueError) as exc:
                outcome = (type(exc).__name__, 0, time.monotonic())
            with lock:
                results.append(outcome)

        try:
            threads = [threading.Thread(target=send, daemon=True) for _ in range(n_requests)]
            for thread in threads:
                thread.start()
            in_flight = _wait_in_flight(service, n_requests, timeout_s=20)
            numbers["in_flight_at_sigterm"] = in_flight
            sent_at = time.monotonic()
            service.process.signal(signal.SIGTERM)
            time.sleep(0.2)
            try:
                late = httpx.get(f"{service.url}/health/live", timeout=2).status_code
            except httpx.HTTPError as exc:
                late = type(exc).__name__
            numbers["new_connection_after_sigterm"] = late
            for thread in threads:
                thread.join(timeout=120)
            code = service.process.wait(timeout_s=60)
        finally:
            service.stop()
        numbers["exit_code"] = code
        numbers["answers"] = [r[0] for r in results]
        finished_after = sum(1 for _, _, t in results if t > sent_at)
        numbers["finished_after_sigterm"] = finished_after
        complete = sum(1 for status, n, _ in results if status == 200 and n == n_cells)
        numbers["complete_answers"] = complete
        expect(in_flight >= 1, "no request was in flight when SIGTERM was sent")
        expect(
            complete == n_requests,
            f"only {complete} of {n_requests} in-flight requests got a full answer: {numbers['answers']}",
        )
        expect(code in (0, -signal.SIGTERM), f"the service exited with {code}")
        return (
            f"{in_flight} requests in flight at SIGTERM, {complete}/{n_requests} full answers ({finished_after} "
            f"finished after the signal), new connections: {late}, exit code {code}"
        )

    return run_scenario("SIGTERM to the service with requests in flight", body)


def _wait_in_flight(service: Service, wanted: int, timeout_s: float) -> int:
    """Poll ``/metrics`` until ``wanted`` requests are admitted to inference (or ``timeout_s`` passes);
    returns how many were admitted at the last poll."""
    deadline = time.monotonic() + timeout_s
    seen = 0
    while time.monotonic() < deadline:
        text = httpx.get(f"{service.url}/metrics", headers=service.headers, timeout=5).text
        for line in text.splitlines():
            if line.startswith("celltype_inference_in_flight"):
                seen = int(float(line.split()[-1]))
        if seen >= wanted:
            return seen
        time.sleep(0.01)
    return seen

