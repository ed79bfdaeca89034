"""Mini-batch samplers: which cells form each training step's mini-batch.

Every sampler is a pure function of ``(seed, epoch, rank, world_size)``: ``batches(epoch)`` returns the
same row indices whenever it is called, in any process. For data-parallel training every rank builds
the same sampler with its own ``rank``; the ranks get disjoint shards of one epoch-wide draw and the
same number of mini-batches, so no rank waits for another at the end of an epoch. ``batch_size`` is
the number of cells per mini-batch on each rank.

Mini-batches of a single cell are never produced: batch statistics (batch norm, batch renorm) need at
least two rows, so a trailing single cell is merged into the mini-batch before it (or dropped with the
incomplete trailing batch when ``drop_last``).

- :class:`ShuffledSampler` (``"shuffled"``, the default): every cell once per epoch, shuffled across labs.
- :class:`LabHomogeneousSampler` (``"lab_homogeneous"``): every mini-batch from one lab; labs come one
  after the other in a shuffled order, as when labs are streamed one file at a time (or, with
  ``interleave=True``, the labs' mini-batches are shuffled together).
- :class:`ClassBalancedSampler` (``"class_balanced"``): cell types drawn about equally often, small
  types with replacement.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np


def _rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, epoch]))


def _n_batches(length: int, batch_size: int, drop_last: bool) -> int:
    """Number of mini-batches :func:`_split` makes of ``length`` rows."""
    full, rest = divmod(length, batch_size)
    if drop_last or rest == 0:
        return full
    return full if rest == 1 else full + 1


def _split(rows: np.ndarray, batch_size: int, drop_last: bool) -> list[np.ndarray]:
    """``rows`` in mini-batches of ``batch_size``; a trailing single row joins the batch before it."""
    count = _n_batches(len(rows), batch_size, drop_last)
    if count == 0:
        return []
    batches = [rows[i * batch_size : (i + 1) * batch_size] for i in range(count)]
    if not drop_last:
        batches[-1] = rows[(count - 1) * batch_size :]
    return batches


class Sampler(ABC):
    """Common interface and checks of the samplers.

    Args:
        labels: cell type of each row.
        batches: batch (lab) of each row.
        batch_size: rows per mini-batch on each rank (at least 2).
        seed: seed of every draw.
        rank: this process's rank in ``[0, world_size)``.
        world_size: number of data-parallel processes.
        drop_last: drop an incomplete trailing mini-batch instead of keeping it.
    """

    def __init__(
        self,
        labels: Sequence[Any] | np.ndarray,
        batches: Sequence[Any] | np.ndarray,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        labels = np.asarray(labels)
        batches = np.asarray(batches)
        if labels.ndim != 1 or labels.shape != batches.shape:
            raise ValueError(
                f"labels and batches must be 1-D with one entry per cell (got shapes {labels.shape}, {batches.shape})"
            )
        if labels.size == 0:
            raise ValueError("there are no cells to sample from")
        if batch_size < 2:
            raise ValueError(f"batch_size must be >= 2: batch statistics need two rows (got {batch_size})")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size) with world_size >= 1 (got rank {rank}, world_size {world_size})")
        self.label_codes = np.unique(labels, return_inverse=True)[1].reshape(-1)
        self.batch_codes = np.unique(batches, return_inverse=True)[1].reshape(-1)
        self.n_rows = labels.size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last

    @abstractmethod
    def batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's mini-batches of ``epoch``: arrays of row indices (int64)."""

    @abstractmethod
    def __len__(self) -> int:
        """Mini-batches per epoch on each rank."""

    def _shard(self, rows: np.ndarray) -> np.ndarray:
        """This rank's share of an epoch-wide order of rows (the remainder of a division by world_size is dropped)."""
        usable = len(rows) - len(rows) % self.world_size
        return rows[self.rank : usable : self.world_size]


class ShuffledSampler(Sampler):
    """Every cell once per epoch (on one rank), in an order shuffled across labs."""

    def batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's mini-batches of ``epoch``."""
        order = _rng(self.seed, epoch).permutation(self.n_rows)
        return _split(self._shard(order), self.batch_size, self.drop_last)

    def __len__(self) -> int:
        return _n_batches(self.n_rows // self.world_size, self.batch_size, self.drop_last)


class LabHomogeneousSampler(Sampler):
    """Every mini-batch from one lab; each cell once per epoch (on one rank).

    Each lab's cells are shuffled and cut into mini-batches. The labs then follow one another in a
    shuffled order (``interleave=False``, as when labs are streamed one file at a time) or all labs'
    mini-batches are shuffled together (``interleave=True``). A lab with a single cell cannot form a
    mini-batch and is skipped. The epoch's mini-batches are dealt to the ranks in turn (trailing ones
    that would leave ranks unequal are dropped), so at each step the ranks see the same or
    neighbouring labs.
    """

    def __init__(self, *args: Any, interleave: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.interleave = interleave

    def _all_batches(self, epoch: int) -> list[np.ndarray]:
        rng = _rng(self.seed, epoch)
        n_labs = int(self.batch_codes.max()) + 1
        per_lab = [
            _split(rng.permutation(np.flatnonzero(self.batch_codes == lab)), self.batch_size, self.drop_last)
            for lab in range(n_labs)
        ]
        if self.interleave:
            pooled = [b for lab_batches in per_lab for b in lab_batches]
            return [pooled[i] for i in rng.permutation(len(pooled))]
        return [b for lab in rng.permutation(n_labs) for b in per_lab[lab]]

    def batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's mini-batches of ``epoch``."""
        everything = self._all_batches(epoch)
        usable = len(everything) - len(everything) % self.world_size
        return everything[self.rank : usable : self.world_size]

    def __len__(self) -> int:
        sizes = np.bincount(self.batch_codes)
        total = sum(_n_batches(int(n), self.batch_size, self.drop_last) for n in sizes)
        return total // self.world_size


class ClassBalancedSampler(Sampler):
    """Cell types drawn about equally often; as many draws per epoch as there are cells.

    Each epoch, every class gets an equal share of the draws (the remainder goes to classes chosen at
    random). A class with at least its share of cells contributes that many distinct cells; a smaller
    class repeats its cells as evenly as possible (each cell ``k`` or ``k + 1`` times). The draws are
    shuffled and sharded like :class:`ShuffledSampler`'s, so a small class's repeated cells may land
    on several ranks.
    """

    def batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's mini-batches of ``epoch``."""
        rng = _rng(self.seed, epoch)
        n_classes = int(self.label_codes.max()) + 1
        total = (self.n_rows // self.world_size) * self.world_size
        quota = np.full(n_classes, total // n_classes)
        quota[rng.permutation(n_classes)[: total % n_classes]] += 1
        draws = []
        for label in range(n_classes):
            members = np.flatnonzero(self.label_codes == label)
            repeats = max(1, -(-int(quota[label]) // members.size))
            tiled = np.concatenate([rng.permutation(members) for _ in range(repeats)])
            draws.append(tiled[: quota[label]])
        order = rng.permutation(np.concatenate(draws))
        return _split(self._shard(order), self.batch_size, self.drop_last)

    def __len__(self) -> int:
        return _n_batches(self.n_rows // self.world_size, self.batch_size, self.drop_last)


SAMPLERS: dict[str, type[Sampler]] = {
    "shuffled": ShuffledSampler,
    "lab_homogeneous": LabHomogeneousSampler,
    "class_balanced": ClassBalancedSampler,
}
"""Sampler classes by the name :func:`make_sampler` takes."""


def make_sampler(
    name: str,
    labels: Sequence[Any] | np.ndarray,
    batches: Sequence[Any] | np.ndarray,
    batch_size: int,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
    **options: Any,
) -> Sampler:
    """Build the sampler called ``name`` (see :data:`SAMPLERS`); ``options`` go to its class.

    Raises:
        ValueError: unknown name, or invalid arguments (see :class:`Sampler`).
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name](
        labels, batches, batch_size, seed=seed, rank=rank, world_size=world_size, drop_last=drop_last, **options
    )
