"""Mini-batch samplers: coverage, lab homogeneity, class balance, determinism and data-parallel shards."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.samplers import (
    SAMPLERS,
    ClassBalancedSampler,
    LabHomogeneousSampler,
    ShuffledSampler,
    make_sampler,
)


def _cells(n: int = 503, n_labs: int = 4, n_classes: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and labs with unequal group sizes (class_0 is small)."""
    rng = np.random.default_rng(seed)
    labels = np.array([f"class_{i}" for i in rng.choice(n_classes, n, p=_skewed(n_classes))])
    labs = np.array([f"lab_{i}" for i in rng.choice(n_labs, n, p=_skewed(n_labs)[::-1])])
    return labels, labs


def _skewed(k: int) -> np.ndarray:
    weights = np.arange(1, k + 1, dtype=float)
    return weights / weights.sum()


@pytest.mark.parametrize("name", ["shuffled", "lab_homogeneous"])
def test_every_cell_comes_once_per_epoch(name, seed) -> None:
    labels, labs = _cells()
    sampler = make_sampler(name, labels, labs, batch_size=32, seed=seed)
    for epoch in range(3):
        batches = sampler.batches(epoch)
        assert len(batches) == len(sampler)
        rows = np.concatenate(batches)
        np.testing.assert_array_equal(np.sort(rows), np.arange(len(labels)))
        assert all(b.dtype == np.int64 for b in batches)


def test_shuffled_batches_mix_labs(seed) -> None:
    labels, labs = _cells()
    batches = ShuffledSampler(labels, labs, 64, seed=seed).batches(0)
    assert np.mean([len(set(labs[b])) > 1 for b in batches]) > 0.9


def test_lab_homogeneous_batches_come_from_one_lab_one_lab_after_another(seed) -> None:
    labels, labs = _cells()
    sampler = LabHomogeneousSampler(labels, labs, 16, seed=seed)
    for epoch in range(4):
        order = [set(labs[b]) for b in sampler.batches(epoch)]
        assert all(len(s) == 1 for s in order)
        sequence = [s.pop() for s in order]
        switches = sum(a != b for a, b in zip(sequence, sequence[1:], strict=False))
        assert switches == 3  # streamed: each of the 4 labs once
    firsts = {LabHomogeneousSampler(labels, labs, 16, seed=seed).batches(e)[0][0] for e in range(6)}
    assert len({labs[r] for r in firsts}) > 1  # the lab order is shuffled per epoch


def test_lab_homogeneous_can_interleave_the_labs(seed) -> None:
    labels, labs = _cells()
    batches = LabHomogeneousSampler(labels, labs, 16, seed=seed, interleave=True).batches(0)
    sequence = [labs[b[0]] for b in batches]
    assert all(len(set(labs[b])) == 1 for b in batches)
    assert sum(a != b for a, b in zip(sequence, sequence[1:], strict=False)) > 10
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(len(labels)))


def test_class_balanced_draws_classes_equally_often(seed) -> None:
    labels, labs = _cells(n=1000)
    sampler = ClassBalancedSampler(labels, labs, 50, seed=seed)
    rows = np.concatenate(sampler.batches(0))
    assert len(rows) == 1000 and len(sampler) == 20
    _, counts = np.unique(labels[rows], return_counts=True)
    assert counts.max() - counts.min() <= 1
    small = np.flatnonzero(labels == "class_0")
    assert len(small) < 200  # the small class is repeated as evenly as possible
    uses = np.bincount(rows, minlength=len(labels))[small]
    assert uses.min() >= 1 and uses.max() - uses.min() <= 1
    large = np.flatnonzero(labels == "class_4")
    assert np.bincount(rows, minlength=len(labels))[large].max() == 1  # no repeats where not needed


def test_samplers_are_pure_functions_of_seed_and_epoch(seed) -> None:
    labels, labs = _cells()
    for name in SAMPLERS:
        first = make_sampler(name, labels, labs, 32, seed=seed).batches(2)
        again = make_sampler(name, labels, labs, 32, seed=seed).batches(2)
        assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
        other_epoch = make_sampler(name, labels, labs, 32, seed=seed).batches(3)
        other_seed = make_sampler(name, labels, labs, 32, seed=seed + 1).batches(2)
        assert not np.array_equal(np.concatenate(first), np.concatenate(other_epoch))
        assert not np.array_equal(np.concatenate(first), np.concatenate(other_seed))


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_get_disjoint_shards_of_equal_length(name, world_size, seed) -> None:
    labels, labs = _cells(n=1001)
    shards = [
        make_sampler(name, labels, labs, 16, seed=seed, rank=rank, world_size=world_size).batches(1)
        for rank in range(world_size)
    ]
    assert len({len(s) for s in shards}) == 1
    single = np.concatenate(make_sampler(name, labels, labs, 16, seed=seed).batches(1))
    pooled = np.concatenate([np.concatenate(s) for s in shards])
    if name == "class_balanced":  # shards of one draw: together they are (nearly) the single-rank draw
        assert len(pooled) == (len(labels) // world_size) * world_size
        _, counts = np.unique(labels[pooled], return_counts=True)
        assert counts.max() - counts.min() <= 1
    else:
        assert len(np.unique(pooled)) == len(pooled)  # disjoint
        assert len(pooled) > len(single) - world_size * 16 * len(set(labs))


def test_drop_last_gives_only_full_batches() -> None:
    labels, labs = _cells()
    for name in SAMPLERS:
        sampler = make_sampler(name, labels, labs, 32, drop_last=True)
        batches = sampler.batches(0)
        assert len(batches) == len(sampler) and all(len(b) == 32 for b in batches)


def test_a_trailing_single_row_joins_the_previous_batch() -> None:
    labels = np.array(["a", "b"] * 5 + ["a"])  # 11 rows, batch size 5 -> 5, 6
    batches = ShuffledSampler(labels, np.zeros(11), 5).batches(0)
    assert [len(b) for b in batches] == [5, 6]
    assert ShuffledSampler(labels[:1], np.zeros(1), 2).batches(0) == []


def test_bad_arguments_are_refused() -> None:
    labels, labs = _cells(n=20)
    with pytest.raises(ValueError, match="unknown sampler 'random'; choose one of shuffled, lab_homogeneous, class_balanced"):
        make_sampler("random", labels, labs, 8)
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        make_sampler("shuffled", labels, labs, 1)
    with pytest.raises(ValueError, match="rank must be in"):
        make_sampler("shuffled", labels, labs, 8, rank=2, world_size=2)
    with pytest.raises(ValueError, match="one entry per cell"):
        make_sampler("shuffled", labels, labs[:5], 8)
    with pytest.raises(ValueError, match="no cells"):
        make_sampler("shuffled", [], [], 8)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 300),
    n_labs=st.integers(1, 5),
    n_classes=st.integers(1, 6),
    batch_size=st.integers(2, 40),
    world_size=st.integers(1, 4),
    drop_last=st.booleans(),
    name=st.sampled_from(sorted(SAMPLERS)),
    seed=st.integers(0, 2**16),
)
def test_sampler_invariants(n, n_labs, n_classes, batch_size, world_size, drop_last, name, seed) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n).astype(str)
    labs = rng.integers(0, n_labs, n).astype(str)
    shards = []
    for rank in range(world_size):
        sampler = make_sampler(name, labels, labs, batch_size, seed=seed, rank=rank, world_size=world_size,
                               drop_last=drop_last)
        batches = sampler.batches(seed % 7)
        assert len(batches) == len(sampler)
        assert all(len(b) >= 2 for b in batches)
        assert all(len(b) <= batch_size + 1 for b in batches)
        if drop_last:
            assert all(len(b) == batch_size for b in batches)
        if name == "lab_homogeneous":
            assert all(len(set(labs[b])) == 1 for b in batches)
        shards.append(batches)
    assert len({len(s) for s in shards}) == 1
    rows = np.concatenate([b for s in shards for b in s]) if shards[0] else np.zeros(0, dtype=np.int64)
    assert ((rows >= 0) & (rows < n)).all()
    if name != "class_balanced":
        assert len(np.unique(rows)) == len(rows)
    if world_size == 1 and not drop_last and name == "shuffled" and n >= 2:
        np.testing.assert_array_equal(np.sort(rows), np.arange(n))


@pytest.mark.parametrize("name", ["shuffled", "lab_homogeneous"])
def test_block_mode_draws_every_cell_once_from_windows_of_contiguous_blocks(name: str) -> None:
    batches_of = np.repeat(["a", "b", "c"], [500, 300, 203])
    labels = np.tile(["x", "y"], 502)[: len(batches_of)]
    sampler = make_sampler(name, labels, batches_of, 32, seed=4, block_rows=50, window_blocks=3)
    plain = make_sampler(name, labels, batches_of, 32, seed=4)
    batches = sampler.batches(0)
    windows = sampler.windows(0)
    assert len(batches) == len(sampler) == len(plain)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(labels)))
    assert np.array_equal(np.concatenate(windows), np.concatenate(batches))  # windows in order of use
    for window in windows:
        runs = np.split(np.sort(window), np.flatnonzero(np.diff(np.sort(window)) > 1) + 1)
        assert len(runs) <= 3 and all(len(run) <= 150 for run in runs)
    assert plain.windows(0) is None
    assert not np.array_equal(np.concatenate(batches), np.concatenate(plain.batches(0)))
