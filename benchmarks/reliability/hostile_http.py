"""Hostile HTTP input against a live service: oversized streamed bodies, hostile upload names, API keys."""

from __future__ import annotations

import random
import secrets
import select
import socket
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from benchmarks.reliability.harness import RssMonitor, Service
from benchmarks.reliability.inputs import h5ad_bytes
from benchmarks.reliability.outcome import Outcome, expect, run_scenario


def upload_names_sanitized(service: Service, genes: Sequence[str], workdir: Path) -> Outcome:
    """Hostile upload file names (``../``, absolute paths, CR/LF) never reach the file system or the headers."""

    def body(numbers: dict[str, Any]) -> str:
        content = h5ad_bytes(genes)
        escape = workdir / f"escaped-{secrets.token_hex(3)}"
        names = [
            f"../../../../../../{escape}.h5ad",
            f"{escape}.h5ad",
            "..\\..\\..\\windows\\system32\\cells.h5ad",
            'cells";\r\nX-Injected: yes\r\n.h5ad',
            "cells\x00.h5ad",
        ]
        checked = 0
        for filename in names:
            answer = httpx.post(
                f"{service.url}/v1/predict/h5ad",
                params={"format": "h5ad"},
                files={"file": (filename, content, "application/octet-stream")},
                headers=service.headers,
                timeout=60,
            )
            expect(
                answer.status_code in (200, 400, 422),
                f"upload named {filename!r} answered {answer.status_code}",
            )
            disposition = answer.headers.get("content-disposition", "")
            expect("x-injected" not in answer.headers, f"header injection through {filename!r}")
            suggested = disposition.partition('filename="')[2].rstrip('"')
            unsafe = [c for c in suggested if c in '/\\"' or ord(c) < 32]
            expect(not unsafe, f"unsafe download name {suggested!r} for {filename!r}")
            checked += 1
        expect(
            not any(escape.parent.glob(f"{escape.name}*")),
            "an upload was written outside the server's temp directory",
        )
        numbers["names_tried"] = checked
        return f"{checked} hostile file names: no file outside the temp directory, safe download names, no injected header"

    return run_scenario("path traversal in upload file names", body)


def stream_body(
    host: str,
    port: int,
    path: str,
    *,
    total_bytes: int,
    chunk_bytes: int = 1 << 20,
    content_type: str = "application/json",
    declare_length: bool = False,
    headers: dict[str, str] | None = None,
    prefix: bytes = b"",
    timeout_s: float = 120,
) -> tuple[int | None, int, float]:
    """Stream a body of ``total_bytes`` (chunked, or with a ``Content-Length``) and stop as soon as the
    server answers or hangs up. Returns (status or ``None``, bytes sent, seconds)."""
    sock = socket.create_connection((host, port), timeout=timeout_s)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Type: {content_type}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    lines.append(f"Content-Length: {total_bytes}" if declare_length else "Transfer-Encoding: chunked")
    started = time.perf_counter()
    sent = 0
    answer = b""
    try:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        filler = prefix + b"0" * max(chunk_bytes - len(prefix), 0)
        while sent < total_bytes:
            if select.select([sock], [], [], 0)[0]:
                break
            piece = filler if sent == 0 else b"0" * chunk_bytes
            piece = piece[: total_bytes - sent]
            sock.sendall(piece if declare_length else f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            sent += len(piece)
        if not declare_length and sent >= total_bytes:
            sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    try:
        sock.settimeout(30)
        while b"\r\n" not in answer:
            data = sock.recv(4096)
            if not data:
                break
            answer += data
    except (ConnectionResetError, TimeoutError):
        pass
    finally:
        sock.close()
    status_line = answer.split(b"\r\n", 1)[0].split()
    status = int(status_line[1]) if len(status_line) >= 2 and status_line[1].isdigit() else None
    return status, sent, time.perf_counter() - started


def oversized_bodies_cut_off(service: Service, *, total_bytes: int, limit_bytes: int) -> Outcome:
    """Stream ``total_bytes`` at each body-taking route (chunked and with a declared length): 413 early,
    the server's RSS stays far below the body size."""

    def body(numbers: dict[str, Any]) -> str:
        port = int(service.url.rsplit(":", 1)[1])
        multipart = "multipart/form-data; boundary=celltypeboundary"
        part = (
            b'--celltypeboundary\r\nContent-Disposition: form-data; name="file"; filename="big.h5ad"\r\n\r\n'
        )
        cases = [
            ("/v1/predict", "application/json", b'{"genes": ["g"], "cells": [[', False),
            ("/v1/predict", "application/json", b"", True),
            ("/invocations", "text/csv", b"g1,g2\n", False),
            ("/v1/predict/h5ad", multipart, part, False),
        ]
        rows = []
        with RssMonitor(service.process.pid, interval_s=0.05) as monitor:
            for path, content_type, prefix, declared in cases:
                status, sent, seconds = stream_body(
                    "127.0.0.1", port, path, total_bytes=total_bytes, content_type=content_type,
                    declare_length=declared, headers=service.headers, prefix=prefix,
                )  # fmt: skip
                rows.append(
                    {
                        "path": path,
                        "declared_length": declared,
                        "status": status,
                        "mb_sent": round(sent / 1e6, 1),
                        "seconds": round(seconds, 2),
                    }
                )
        numbers["cases"] = rows
        numbers["rss_start_mb"] = round(monitor.start_mb, 1)
        numbers["rss_peak_mb"] = round(monitor.peak_mb, 1)
        numbers["body_mb"] = round(total_bytes / 1e6)
        numbers["limit_mb"] = round(limit_bytes / 1e6, 1)
        growth = monitor.peak_mb - monitor.start_mb
        for row in rows:
            expect(
                row["status"] == 413,
                f"{row['path']} answered {row['status']} to a {numbers['body_mb']} MB body",
            )
            expect(
                row["mb_sent"] * 1e6 <= limit_bytes + 32e6,
                f"{row['path']} read {row['mb_sent']} MB before refusing",
            )
        expect(growth < limit_bytes / 1e6 + 64, f"RSS grew by {growth:.0f} MB streaming oversized bodies")
        return (
            f"{len(rows)} bodies of {numbers['body_mb']} MB: all 413 after at most {max(r['mb_sent'] for r in rows)} MB "
            f"(limit {numbers['limit_mb']} MB); RSS {numbers['rss_start_mb']} -> peak {numbers['rss_peak_mb']} MB"
        )

    return run_scenario("oversized streamed bodies", body)


def api_key_enforced(service: Service, *, rounds: int, check_timing: bool = True) -> Outcome:
    """Missing and wrong keys get 401 everywhere but ``/health``; wrong keys of the right length, near
    misses and wrong lengths take the same time (medians over ``rounds`` interleaved requests).

    ``check_timing=False`` still measures and reports the medians but does not judge them (tests
    assert behaviour; the timing verdict belongs to the benchmark run on a quiet machine)."""

    def body(numbers: dict[str, Any]) -> str:
        key = service.api_key
        if not key:
            raise ValueError("the service has no API key")
        near = key[:-1] + ("A" if key[-1] != "A" else "B")
        candidates = {
            "correct (200, for scale)": key,
            "wrong, same length": "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz") for _ in key),
            "near miss (last char)": near,
            "wrong length (1 char)": "x",
            "wrong length (4x)": key * 4,
        }
        order = random.Random(0)
        with httpx.Client(base_url=service.url, timeout=10) as client:
            for path in ("/v1/model", "/metrics", "/v1/model/genes"):
                expect(client.get(path).status_code == 401, f"{path} without a key did not answer 401")
                expect(
                    client.get(path, headers={"X-API-Key": near}).status_code == 401,
                    f"{path} accepted a near miss",
                )
            expect(
                client.post("/v1/admin/reload").status_code == 401, "reload without a key did not answer 401"
            )
            expect(client.get("/health/ready").status_code == 200, "/health/ready needs a key")
            timings: dict[str, list[float]] = {label: [] for label in candidates}
            statuses: dict[str, set[int]] = {label: set() for label in candidates}
            labels = list(candidates)
            for _ in range(rounds):
                order.shuffle(labels)
                for label in labels:
                    started = time.perf_counter()
                    status = client.get(
                        "/v1/model/genes", headers={"X-API-Key": candidates[label]}
                    ).status_code
                    timings[label].append(time.perf_counter() - started)
                    statuses[label].add(status)
        medians = {label: round(statistics.median(values) * 1e6, 1) for label, values in timings.items()}
        wrong = {label: m for label, m in medians.items() if not label.startswith("correct")}
        numbers["median_us"] = medians
        spread = max(wrong.values()) - min(wrong.values())
        numbers["spread_us"] = round(spread, 1)
        expect(statuses["correct (200, for scale)"] == {200}, "the correct key was refused")
        for label in wrong:
            expect(statuses[label] == {401}, f"{label} got {statuses[label]}")
        expect(not check_timing or spread < max(250.0, 0.3 * min(wrong.values())),
               f"wrong keys differ in median time by {spread:.0f} us: {wrong}")  # fmt: skip
        return (
            "missing/wrong keys: 401 on every protected route, /health open; medians of wrong keys "
            + ", ".join(f"{k} {v:.0f} us" for k, v in wrong.items())
            + f" (spread {spread:.0f} us over {rounds} rounds)"
        )

    return run_scenario("API key enforcement and timing", body)

