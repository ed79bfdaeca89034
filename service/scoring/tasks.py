"""Chunks: the unit of work that is checkpointed for ``--resume`` and sent to a Dask worker."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from service.scoring.inputs import PreparedInput


@dataclass(frozen=True)
class ChunkTask:
    """One chunk to score: where to read it and how, never the data itself (cheap to send to a worker).

    Attributes:
        input_index: position of the input among the run's inputs.
        chunk_index: position of the chunk within its input.
        path: absolute path of the input file.
        layer: the layer to read, ``None`` for ``X``.
        start, stop: the chunk's rows, ``start .. stop - 1``.
        input_kind: ``"counts"`` or ``"lognorm"``.
        source_index: for each model gene, its column in the file (-1: missing), from :meth:`Predictor.align`.
        top_k: the requested top-k (see :class:`ResultColumns`).
    """

    input_index: int
    chunk_index: int
    path: str
    layer: str | None
    start: int
    stop: int
    input_kind: str
    source_index: np.ndarray = field(repr=False)
    top_k: int

    @property
    def n_cells(self) -> int:
        """Number of cells in the chunk."""
        return self.stop - self.start


def chunk_tasks(inputs: list[PreparedInput], chunk_size: int, layer: str | None, top_k: int) -> list[ChunkTask]:
    """Every input cut into chunks of ``chunk_size`` cells, in input order."""
    tasks = []
    for input_index, item in enumerate(inputs):
        for chunk_index, start in enumerate(range(0, item.reader.n_cells, chunk_size)):
            tasks.append(
                ChunkTask(
                    input_index=input_index,
                    chunk_index=chunk_index,
                    path=str(item.path.resolve()),
                    layer=layer,
                    start=start,
                    stop=min(start + chunk_size, item.reader.n_cells),
                    input_kind=item.input_kind,
                    source_index=item.alignment.source_index,
                    top_k=top_k,
                )
            )
    return tasks
