"""The real ``celltype serve`` in a subprocess: HTTP, body limits on the wire, graceful SIGTERM, load errors."""

from __future__ import annotations

import http.client
import json
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, stop_process_group, subprocess_env, wait_until_healthy

from .conftest import predict_body, random_counts

ROOT = Path(__file__).resolve().parents[2]
BODY_LIMIT = 65536


def start_serve(bundle_dir: Path, log: Path, **env: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    command = [sys.executable, "-m", "cli", "serve", "--model", str(bundle_dir), "--port", str(port)]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=subprocess_env(CELLTYPE_DEVICE="cpu", **env),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_until_healthy(f"http://127.0.0.1:{port}/health/ready", process, log, 120)
    return process, port


@pytest.fixture(scope="module")
def server(bundle_dir, tmp_path_factory) -> Iterator[int]:
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    process, port = start_serve(bundle_dir, log, CELLTYPE_MAX_BODY_BYTES=str(BODY_LIMIT))
    yield port
    stop_process_group(process)


def test_serves_predictions_over_http(server, predictor):
    cells = random_counts(3)
    response = httpx.post(
        f"http://127.0.0.1:{server}/v1/predict", json=predict_body(cells), headers={"X-Request-ID": "wire-1"}
    )
    assert response.status_code == 200 and response.headers["x-request-id"] == "wire-1"
    assert [p["label"] for p in response.json()["predictions"]] == predictor.predict(cells).tolist()
    assert "celltype_cells_predicted_total" in httpx.get(f"http://127.0.0.1:{server}/metrics").text


def read_status(connection: socket.socket, timeout_s: float = 10.0) -> tuple[int, bytes]:
    connection.settimeout(timeout_s)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
        0,
    )
    while len(rest) < length:  # the body may arrive after the headers
        chunk = connection.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(head.split(b" ")[1]), head + b"\r\n\r\n" + rest


def test_a_declared_oversized_body_is_refused_before_it_is_sent(server):
    with socket.create_connection(("127.0.0.1", server)) as connection:
        connection.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 10000000000\r\n\r\n"
        )
        status, raw = read_status(connection)
    assert status == 413 and b"larger than 65536 bytes" in raw


def test_an_endless_chunked_body_is_cut_off_at_the_limit(server):
    chunk = b"[" + b"0," * 4000 + b"0]"
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", server)) as connection:
        connection.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        connection.settimeout(5)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if select.select([connection], [], [], 0)[0]:
                break
            try:
                connection.sendall(frame)
            except (TimeoutError, BrokenPipeError, ConnectionResetError):
                break
            sent += len(frame)
        status, raw = read_status(connection)
    assert status == 413 and b"larger than 65536 bytes" in raw
    assert sent < 64 * 1024 * 1024  # the body never ends: the answer came while it was still streaming


def test_sigterm_lets_the_request_in_flight_finish(bundle_dir, predictor, tmp_path):
    log = tmp_path / "serve.log"
    process, port = start_serve(bundle_dir, log)
    try:
        cells = random_counts(4)
        body = json.dumps(predict_body(cells)).encode()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.putrequest("POST", "/v1/predict")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders()
        connection.send(body[: len(body) // 2])
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert process.poll() is None, "the server must wait for the request in flight"
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        connection.send(body[len(body) // 2 :])
        response = connection.getresponse()
        assert response.status == 200
        assert [p["label"] for p in json.loads(response.read())["predictions"]] == predictor.predict(cells).tolist()
        connection.close()
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        stop_process_group(process)
    assert "Traceback" not in log.read_text()


def test_a_model_that_cannot_be_loaded_is_a_clear_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "cli", "serve", "--model", str(tmp_path / "missing"), "--port", str(free_port())],
        cwd=ROOT,
        env=subprocess_env(CELLTYPE_DEVICE="cpu"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "celltype serve: error: no model bundle at" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_several_workers_share_their_metrics(bundle_dir, tmp_path):
    log = tmp_path / "serve.log"
    process, port = start_serve(bundle_dir, log, CELLTYPE_WORKERS="2")
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base) as http:
            for _ in range(12):
                assert http.post("/v1/predict", json=predict_body(random_counts(3))).status_code == 200
            text = http.get("/metrics").text
        cells = [line for line in text.splitlines() if line.startswith("celltype_cells_predicted_total")]
        assert sum(float(line.rsplit(" ", 1)[1]) for line in cells) == 36
        assert text.count("celltype_model_info{") >= 1
    finally:
        stop_process_group(process)
