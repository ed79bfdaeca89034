"""Bounded concurrency and queue (503 with Retry-After), the request timeout (504), and the runner itself."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.inference import InferenceRunner, InferenceTimeoutError, OverloadedError
from service.observability import Metrics, request_id_var

from .conftest import assert_client_error, predict_body, random_counts


def wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_full_queue_answers_503_with_retry_after(make_client, blocking_predictor):
    client = make_client(predictor=blocking_predictor, max_concurrency=1, max_queue=1)
    body = predict_body(random_counts(1))
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(client.post("/v1/predict", json=body).status_code)) for _ in range(2)]
    threads[0].start()
    wait_for(blocking_predictor.entered.is_set)
    threads[1].start()
    wait_for(lambda: client.app.state.runner.admitted == 2)
    response = client.post("/v1/predict", json=body)
    assert_client_error(response, 503, "at capacity")
    assert response.headers["retry-after"] == "1"
    blocking_predictor.release.set()
    for thread in threads:
        thread.join(timeout=30)
    assert results == [200, 200]
    assert client.post("/v1/predict", json=body).status_code == 200


def test_slow_requests_answer_504_and_free_their_slot(make_client, blocking_predictor):
    client = make_client(predictor=blocking_predictor, request_timeout_s=0.2, max_concurrency=1, max_queue=0)
    response = client.post("/v1/predict", json=predict_body(random_counts(1)))
    assert_client_error(response, 504, "not answered within 0.2 s")
    assert client.app.state.runner.admitted == 1  # the work still runs in its thread
    blocking_predictor.release.set()
    wait_for(lambda: client.app.state.runner.admitted == 0)
    assert client.post("/v1/predict", json=predict_body(random_counts(1))).status_code == 200


def test_health_answers_while_every_worker_is_busy(make_client, blocking_predictor):
    client = make_client(predictor=blocking_predictor, max_concurrency=1, max_queue=0)
    thread = threading.Thread(target=lambda: client.post("/v1/predict", json=predict_body(random_counts(1))))
    thread.start()
    wait_for(blocking_predictor.entered.is_set)
    started = time.monotonic()
    assert client.get("/health/ready").status_code == 200
    assert time.monotonic() - started < 5
    blocking_predictor.release.set()
    thread.join(timeout=30)


def test_runner_limits_timeouts_and_request_ids():
    async def scenario() -> None:
        runner = InferenceRunner(max_concurrency=1, max_queue=1, timeout_s=0.3, metrics=Metrics())
        gate = threading.Event()
        token = request_id_var.set("rid-7")
        try:
            assert await runner.run(request_id_var.get) == "rid-7"
        finally:
            request_id_var.reset(token)
        first = asyncio.ensure_future(runner.run(gate.wait, 10))
        second = asyncio.ensure_future(runner.run(lambda: "queued"))
        await asyncio.sleep(0.05)
        assert runner.admitted == 2
        with pytest.raises(OverloadedError):
            await runner.run(lambda: "refused")
        with pytest.raises(InferenceTimeoutError):
            await first
        with pytest.raises(InferenceTimeoutError):
            await second  # waited in the queue past the deadline: cancelled before it started
        gate.set()
        for _ in range(100):
            if runner.admitted == 0:
                break
            await asyncio.sleep(0.01)
        assert runner.admitted == 0
        assert await runner.run(lambda: 42) == 42
        runner.shutdown()

    asyncio.run(scenario())
