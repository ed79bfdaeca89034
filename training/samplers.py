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

Block mode (``block_rows=B``, for data read from disk, :mod:`training.streaming`): the shuffled and
lab-homogeneous samplers then shuffle contiguous blocks of ``B`` rows instead of single rows. The rows
(or a lab's rows) are cut into blocks of consecutive row positions; the blocks are shuffled, taken
``window_blocks`` at a time, and each such window's rows are shuffled among themselves; the epoch's
order is the windows one after the other, cut into mini-batches as without blocks (so the number of
mini-batches is the same). :meth:`Sampler.windows` names each window's rows, in the order they are
used, so a reader can load them window by window. The draws differ from those without blocks: a
mini-batch mixes the cells of ``window_blocks`` blocks, not of the whole data.
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

    def windows(self, epoch: int) -> list[np.ndarray] | None:
        """The rows of ``epoch`` grouped by the contiguous blocks they are read in, in order of use;
        ``None`` when the sampler draws rows one by one (no block mode)."""
        return None

    def _shard(self, rows: np.ndarray) -> np.ndarray:
        """This rank's share of an epoch-wide order of rows (the remainder of a division by world_size is dropped)."""
        usable = len(rows) - len(rows) % self.world_size
        return rows[self.rank : usable : self.world_size]


class _BlockMixin:
    """The ``block_rows``/``window_blocks`` options of the block-mode samplers (see the module docstring)."""

    def _init_blocks(self, block_rows: int | None, window_blocks: int) -> None:
        if block_rows is not None and block_rows < 1:
            raise ValueError(f"block_rows must be a positive number of rows or None (got {block_rows})")
        if window_blocks < 1:
            raise ValueError(f"window_blocks must be >= 1 (got {window_blocks})")
        self.block_rows = block_rows
        self.window_blocks = window_blocks

    def _block_windows(self, rng: np.random.Generator, positions: np.ndarray) -> list[np.ndarray]:
        """``positions`` in shuffled windows of ``window_blocks`` shuffled blocks (see the module docstring)."""
        size = int(self.block_rows or 1)
        blocks = [positions[i : i + size] for i in range(0, len(positions), size)]
        chosen = rng.permutation(len(blocks))
        step = self.window_blocks
        return [
            rng.permutation(np.concatenate([blocks[b] for b in chosen[w : w + step]]))
            for w in range(0, len(chosen), step)
        ]


class ShuffledSampler(_BlockMixin, Sampler):
    """Every cell once per epoch (on one rank), in an order shuffled across labs.

    With ``block_rows``, shuffled in blocks of contiguous rows (see the module docstring).
    """

    def __init__(self, *args: Any, block_rows: int | None = None, window_blocks: int = 16, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_blocks(block_rows, window_blocks)

    def _plan(self, epoch: int) -> list[np.ndarray]:
        rng = _rng(self.seed, epoch)
        if self.block_rows is None:
            return [rng.permutation(self.n_rows)]
        return self._block_windows(rng, np.arange(self.n_rows))

    def batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's mini-batches of ``epoch``."""
        order = np.concatenate(self._plan(epoch))
        return _split(self._shard(order), self.batch_size, self.drop_last)

    def windows(self, epoch: int) -> list[np.ndarray] | None:
        """The epoch's windows of blocks (``None`` without ``block_rows``)."""
        return None if self.block_rows is None else self._plan(epoch)

    def __len__(self) -> int:
        return _n_batches(self.n_rows // self.world_size, self.batch_size, self.drop_last)


class LabHomogeneousSampler(_BlockMixin, Sampler):
    """Every mini-batch from one lab; each cell once per epoch (on one rank).

    Each lab's cells are shuffled and cut into mini-batches. The labs then follow one another in a
    shuffled order (``interleave=False``, as when labs are streamed one file at a time) or all labs'
    mini-batches are shuffled together (``interleave=True``). A lab with a single cell cannot form a
    mini-batch and is skipped. The epoch's mini-batches are dealt to the ranks in turn (trailing ones
    that would leave ranks unequal are dropped), so at each step the ranks see the same or
    neighbouring labs.

    With ``block_rows`` (and ``interleave=False``), each lab's rows are shuffled in blocks of
    contiguous rows (see the module docstring): contiguous on disk when each lab's cells are stored
    together (one file per lab, or a file sorted by lab).
    """

    def __init__(
        self, *args: Any, interleave: bool = False, block_rows: int | None = None, window_blocks: int = 16,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.interleave = interleave
        self._init_blocks(block_rows, window_blocks)

    def _plan(self, epoch: int) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
        """The epoch's mini-batches (all ranks) and, per lab in order of use, the lab's windows."""
        rng = _rng(self.seed, epoch)
        n_labs = int(self.batch_codes.max()) + 1
        blocked = self.block_rows is not None and not self.interleave
        windows: list[list[np.ndarray]] = []
        per_lab = []
        for lab in range(n_labs):
            members = np.flatnonzero(self.batch_codes == lab)
            windows.append(self._block_windows(rng, members) if blocked else [rng.permutation(members)])
            per_lab.append(_split(np.concatenate(windows[-1]), self.batch_size, self.drop_last))
        if self.interleave:
            pooled = [b for lab_batches in per_lab for b in lab_batches]
            return [pooled[i] for i in rng.permutation(len(pooled))], windows
        labs = rng.permutation(n_labs)
        return [b for lab in labs for b in per_lab[lab]], [windows[lab] for lab in labs]

    def _all_batches(self, epoch: int) -> list[np.ndarray]:
        return self._plan(epoch)[0]

    def windows(self, epoch: int) -> list[np.ndarray] | None:
        """The epoch's windows of blocks, lab after lab (``None`` without ``block_rows`` or with ``interleave``)."""
        if self.block_rows is None or self.interleave:
            return None
        return [w for lab_windows in self._plan(epoch)[1] for w in lab_windows]

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
