"""Where chunks are scored: threads of this process, or the workers of a Dask cluster.

Locally, blocks run side by side on one thread per usable core (at most :data:`MAX_THREADS`), each with
torch on one intra-op thread. On Dask, each worker loads the model once (cached per worker process,
keyed by the bundle's digest) and reads its row ranges from the file itself; only paths, row ranges
and the small results travel. Both set up the C library's allocator (:func:`keep_freed_memory`).
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from model.bundle import ModelBundle
from model.h5ad import H5adRows
from model.predict import Predictor
from model.threads import torch_threads, usable_cores
from service.blas_threads import blas_threads
from service.scoring.blocks import forward_rows, score_chunk
from service.scoring.inputs import PreparedInput
from service.scoring.tasks import ChunkTask
from service.scoring_io import ChunkResult, ResultColumns, ScoringError

SCHEDULER_TIMEOUT_S = 10.0
"""Seconds to wait for a Dask scheduler given with ``--scheduler`` before calling it unreachable."""
HEAP_RETAIN_BYTES = 256 << 20
"""glibc keeps up to this much freed memory for reuse instead of returning it to the system."""
MAX_THREADS = 8
"""Most threads scoring blocks side by side in a single-process run."""


def keep_freed_memory() -> None:
    """Let glibc reuse freed memory instead of handing it back to the system after every block.

    Each forward pass allocates temporaries of several MB (a block's input is 8 MB). By default glibc maps
    such allocations fresh and unmaps them when freed, and Dask workers even trim the heap above 64 kB
    (``MALLOC_TRIM_THRESHOLD_``), so every block pays its page faults again: about a third of a worker's
    CPU time went to the kernel. Allocations up to 64 MB now come from the heap, which keeps up to
    :data:`HEAP_RETAIN_BYTES` of freed memory. Process-wide; a no-op where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameters from <malloc.h>
    libc.mallopt(m_mmap_threshold, 64 << 20)
    libc.mallopt(m_trim_threshold, HEAP_RETAIN_BYTES)


def score_locally(
    predictor: Predictor,
    inputs: list[PreparedInput],
    tasks: list[ChunkTask],
    columns: ResultColumns,
    on_result: Callable[[ChunkTask, ChunkResult], None],
) -> None:
    """Score ``tasks`` in this process, one block per usable core at a time; hand each result to ``on_result``."""
    keep_freed_memory()
    threads = min(MAX_THREADS, usable_cores())
    with torch_threads(1 if threads > 1 else 0), blas_threads(1):
        for task in tasks:
            on_result(task, score_chunk(predictor, inputs[task.input_index].reader, task, columns, threads))


@contextmanager
def dask_client(scheduler: str | None, workers: int | None) -> Iterator[Any]:
    """A Dask client: connected to ``scheduler``, or to a new local cluster of ``workers`` processes.

    Raises:
        ScoringError: the scheduler cannot be reached.
    """
    # Imported here: only Dask runs pay for importing distributed.
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout=SCHEDULER_TIMEOUT_S)
        except (OSError, ValueError) as exc:
            raise ScoringError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
        with client:
            yield client
        return
    try:
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        )
    except RuntimeError as exc:
        raise ScoringError(f"cannot start a local Dask cluster of {workers} worker(s): {exc}") from None
    with cluster, Client(cluster) as client:
        yield client


def score_on_dask(
    client: Any,
    bundle: ModelBundle,
    tasks: list[ChunkTask],
    device: str,
    on_result: Callable[[ChunkTask, ChunkResult], None],
) -> None:
    """Score ``tasks`` on the cluster behind ``client``; hand each result to ``on_result`` as it arrives.

    Raises:
        ScoringError: the cluster failed (finished chunks stay saved for ``--resume``).
    """
    from distributed import KilledWorker, as_completed
    from distributed.comm import CommClosedError

    if not tasks:
        return
    bundle_future = client.scatter(bundle, broadcast=True)
    futures = {
        client.submit(score_chunk_on_worker, bundle_future, task, device, pure=False): task for task in tasks
    }
    try:
        for future in as_completed(futures):
            task = futures[future]
            try:
                result = future.result()
            except (KilledWorker, CommClosedError, OSError) as exc:
                raise ScoringError(
                    f"the Dask cluster failed while scoring cells {task.start}..{task.stop - 1} of {task.path} "
                    f"({type(exc).__name__}: {exc}); finished chunks are kept: rerun with --resume"
                ) from None
            on_result(task, result)
            future.release()
    finally:
        client.cancel(list(futures))


_WORKER_PREDICTORS: dict[tuple[str, str], Predictor] = {}
"""Per worker process: the loaded models, keyed by (bundle digest, device), so each is built once."""


def worker_predictor(bundle: ModelBundle, device: str) -> Predictor:
    """The Predictor for ``bundle`` in this process, built on first use and then reused."""
    key = (str(bundle.sha256), device)
    predictor = _WORKER_PREDICTORS.get(key)
    if predictor is None:
        keep_freed_memory()
        predictor = Predictor(bundle, device=device, chunk_size=forward_rows())
        _WORKER_PREDICTORS[key] = predictor
    return predictor


def score_chunk_on_worker(bundle: ModelBundle, task: ChunkTask, device: str) -> ChunkResult:
    """Dask task: score ``task`` with this worker's cached model, reading the rows from the file here."""
    predictor = worker_predictor(bundle, device)
    columns = ResultColumns(tuple(predictor.classes), task.top_k)
    with H5adRows(task.path, task.layer) as reader:
        return score_chunk(predictor, reader, task, columns)
