"""Running predictions off the event loop, with bounded concurrency, a bounded queue and a deadline.

:class:`InferenceRunner` admits at most ``max_concurrency + max_queue`` requests at a time; beyond
that it refuses at once (503 with ``Retry-After``) instead of letting latency grow without bound.
Admitted work (decoding the body, predicting, encoding the answer) runs in a thread pool of
``max_concurrency`` threads, side by side (torch releases the GIL in its kernels); a request not done
within ``timeout_s`` is answered 504.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from model.outputs import UNKNOWN_REASON_COLUMN
from model.predict import Annotation
from service.decoding.prediction_input import PredictionInput
from service.model_store import ServedModel
from service.observability import Metrics

T = TypeVar("T")

RETRY_AFTER_S = 1
"""Seconds an overloaded service asks clients to wait before retrying (``Retry-After``)."""


class OverloadedError(Exception):
    """Every worker is busy and the queue is full."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__("overloaded")
        self.retry_after_s = retry_after_s


class InferenceTimeoutError(Exception):
    """A request was not answered within the deadline."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__("timeout")
        self.timeout_s = timeout_s


class InferenceRunner:
    """A bounded thread pool with admission control and a per-request deadline.

    Args:
        max_concurrency: worker threads.
        max_queue: admitted requests allowed to wait for a worker.
        timeout_s: deadline from admission to answer.
        metrics: updated with the number of admitted requests.
    """

    def __init__(self, max_concurrency: int, max_queue: int, timeout_s: float, metrics: Metrics) -> None:
        self.capacity = max_concurrency + max_queue
        self.timeout_s = timeout_s
        self.metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="celltype-inference")
        self._admitted = 0

    @property
    def admitted(self) -> int:
        """Requests admitted and not finished (running or waiting), timed-out ones included until they stop."""
        return self._admitted

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """Run ``function(*args)`` in the pool and return its result.

        Raises:
            OverloadedError: ``capacity`` requests are already admitted.
            InferenceTimeoutError: no result within ``timeout_s`` (the work is cancelled if it has not
                started; work already running finishes in the background and still counts as admitted).
        """
        if self._admitted >= self.capacity:
            raise OverloadedError(retry_after_s=RETRY_AFTER_S)
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        future: Future[T] = self._executor.submit(context.run, function, *args)
        self._admitted += 1
        self.metrics.in_flight.set(self._admitted)
        future.add_done_callback(lambda _: _call_soon(loop, self._release))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)
        except TimeoutError:
            raise InferenceTimeoutError(self.timeout_s) from None

    def _release(self) -> None:
        self._admitted -= 1
        self.metrics.in_flight.set(self._admitted)

    def shutdown(self) -> None:
        """Stop accepting work and wait for running work to finish."""
        self._executor.shutdown(wait=True, cancel_futures=True)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed during shutdown; nothing left to count
        loop.call_soon_threadsafe(callback)


def annotate(served: ServedModel, request: PredictionInput) -> Annotation:
    """Predict every cell of ``request`` with ``served`` (eval mode, fixed statistics).

    The predictor's gene-alignment cache is not guarded against concurrent use, so the alignment is
    computed (or refreshed as most recently used) under :attr:`ServedModel.lock` first; ``annotate``
    then finds it in the cache.
    """
    with served.lock:
        served.predictor.align(request.genes)
    return served.predictor.annotate(
        request.matrix, request.genes, input_kind=request.input_kind, threshold=request.threshold
    )


def prediction_records(
    served: ServedModel,
    annotation: Annotation,
    *,
    cell_ids: list[str] | None = None,
    top_k: int | None = None,
    return_probabilities: bool = False,
) -> list[dict[str, Any]]:
    """One JSON-ready dict per cell: ``cell_id``?, ``label``, ``confidence``, ``unknown_reason``,
    ``probabilities``?, ``top_k``?."""
    classes = served.predictor.classes
    records = [
        {"label": label, "confidence": confidence, UNKNOWN_REASON_COLUMN: reason}
        for label, confidence, reason in zip(
            annotation.labels.tolist(), annotation.confidence.tolist(), annotation.unknown_reason.tolist(), strict=True
        )
    ]
    if cell_ids is not None:
        records = [{"cell_id": cell_id, **record} for cell_id, record in zip(cell_ids, records, strict=True)]
    probabilities = annotation.probabilities
    if return_probabilities:
        for record, row in zip(records, probabilities.tolist(), strict=True):
            record["probabilities"] = dict(zip(classes, row, strict=True))
    if top_k is not None:
        k = min(top_k, len(classes))
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        ranked = np.take_along_axis(probabilities, order, axis=1).tolist()
        for record, columns, values in zip(records, order.tolist(), ranked, strict=True):
            record["top_k"] = [
                {"label": classes[column], "probability": value} for column, value in zip(columns, values, strict=True)
            ]
    return records


def predict_payload(served: ServedModel, request: PredictionInput) -> dict[str, Any]:
    """The ``/v1/predict`` response body for ``request``."""
    annotation = annotate(served, request)
    return {
        "model": served.summary,
        "predictions": prediction_records(
            served,
            annotation,
            cell_ids=request.cell_ids,
            top_k=request.top_k,
            return_probabilities=request.return_probabilities,
        ),
        "gene_overlap": annotation.alignment.report(),
    }
