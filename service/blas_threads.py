"""Thread limits of the BLAS library numpy uses (OpenBLAS), for the novelty detector's numpy products.

Left at its default, OpenBLAS starts a thread per core for every product, while scoring blocks and
requests already run side by side, one per core: its threads then spin and wait on each other (about a
quarter of a scoring run's CPU time, a tenth of the server's at 1000-cell requests). torch's own intra-op
threads are set by :mod:`model.threads`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from threadpoolctl import threadpool_limits


@contextmanager
def blas_threads(count: int) -> Iterator[None]:
    """Run the block with numpy's BLAS limited to ``count`` threads, then restore the previous limit.

    Dask workers run with one BLAS thread already (``distributed`` sets ``OPENBLAS_NUM_THREADS=1``), so a
    local scoring run with ``count = 1`` computes the same numbers as a Dask run.
    """
    with threadpool_limits(limits=count, user_api="blas"):
        yield


def limit_blas_threads(count: int) -> None:
    """Limit numpy's BLAS to ``count`` threads for the rest of the process (like ``torch.set_num_threads``)."""
    threadpool_limits(limits=count, user_api="blas")
