"""A bounded loopback load against a live ``celltype serve``: errors, latency, throughput, memory."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass

import httpx
import numpy as np

from benchmarks.reliability.harness import RssMonitor, Service, rss_mb


@dataclass
class LoadResult:
    """One bounded load run against a server.

    Attributes:
        clients: concurrent clients (each with its own keep-alive connection).
        seconds: measured duration.
        requests: requests answered or failed.
        errors: requests without a 200 answer.
        statuses: answers by status (``"exception"`` for transport failures).
        p50_ms, p99_ms, max_ms: latency of the 200 answers.
        requests_per_s, cells_per_s: throughput.
        rss_start_mb, rss_end_mb, rss_peak_mb: server memory after warm-up, after the run, at its peak.
    """

    clients: int
    seconds: float
    requests: int
    errors: int
    statuses: dict[str, int]
    p50_ms: float
    p99_ms: float
    max_ms: float
    requests_per_s: float
    cells_per_s: float
    rss_start_mb: float
    rss_end_mb: float
    rss_peak_mb: float


def run_load(
    service: Service,
    body: bytes,
    *,
    clients: int,
    duration_s: float,
    cells_per_request: int,
    warmup_requests: int = 20,
    path: str = "/v1/predict",
) -> LoadResult:
    """``clients`` threads POST ``body`` to ``service`` back to back for ``duration_s`` seconds."""
    headers = {**service.headers, "Content-Type": "application/json"}
    with httpx.Client(timeout=60) as warm:
        for _ in range(warmup_requests):
            warm.post(f"{service.url}{path}", content=body, headers=headers).raise_for_status()
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + duration_s

    def client() -> None:
        with httpx.Client(timeout=60) as session:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    status = str(
                        session.post(f"{service.url}{path}", content=body, headers=headers).status_code
                    )
                except httpx.HTTPError as exc:
                    status = f"exception {type(exc).__name__}"
                elapsed = time.perf_counter() - started
                with lock:
                    statuses[status] += 1
                    if status == "200":
                        latencies.append(elapsed)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    with RssMonitor(service.process.pid) as monitor:
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=duration_s + 120)
        seconds = time.perf_counter() - started
    requests = sum(statuses.values())
    ok = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
    return LoadResult(
        clients=clients,
        seconds=round(seconds, 1),
        requests=requests,
        errors=requests - statuses.get("200", 0),
        statuses=dict(statuses),
        p50_ms=round(float(np.percentile(ok, 50)), 1),
        p99_ms=round(float(np.percentile(ok, 99)), 1),
        max_ms=round(float(ok.max()), 1),
        requests_per_s=round(requests / seconds, 1),
        cells_per_s=round(statuses.get("200", 0) * cells_per_request / seconds, 0),
        rss_start_mb=round(monitor.start_mb, 1),
        rss_end_mb=round(rss_mb(service.process.pid), 1),
        rss_peak_mb=round(monitor.peak_mb, 1),
    )

