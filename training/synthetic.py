r"""Synthetic multi-lab single-cell data for tests and benchmarks, at any size.

The generative model, per cell :math:`c` of type :math:`t` measured in lab :math:`l`:

- each type has a latent log-expression profile :math:`z_t = \mathrm{base} + \mathrm{markers}_t` (every
  type has its own marker genes, up by 1-2.5 on the log scale);
- each lab distorts it gene-wise: :math:`x = a_l \odot z_t + b_l + \varepsilon` with a log-scale
  :math:`a_l = \exp(0.25\,\lambda\,\mathcal{N}(0, 1))`, a shift :math:`b_l = \lambda\,\mathcal{N}(0, 1)`
  (:math:`\lambda` = ``lab_effect``; 0 means no lab effect) and per-cell noise
  :math:`\varepsilon \sim \mathcal{N}(0, \mathrm{noise}^2)`; labs also differ in sequencing depth;
- counts are negative binomial with mean :math:`L_c\,\mathrm{softmax}(x)` (library size :math:`L_c`
  log-normal around the lab's depth) and inverse dispersion ``theta``.

Cells are drawn in blocks of :data:`BLOCK_CELLS`, each from its own random stream derived from the
seed, so the data depends only on the seed and the parameters: :func:`make_multilab` and
:func:`write_synthetic_h5ad` give identical cells for the same arguments, whatever the chunk size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata.io import write_elem

from model.preprocessing import Preprocessing, log_normalize_sparse

BLOCK_CELLS = 1024
"""Cells drawn from one random stream; bounds the dense working set while generating."""

MARKER_FRACTION = 0.04
"""Share of the genes that are markers of each type (at least one gene per type)."""


@dataclass(frozen=True)
class _World:
    """The latent parameters shared by every cell: profiles, lab distortions, depths, proportions."""

    type_profiles: np.ndarray  # (n_types, n_genes) log-expression z_t
    lab_scale: np.ndarray  # (n_labs, n_genes) a_l
    lab_shift: np.ndarray  # (n_labs, n_genes) b_l
    lab_log_depth: np.ndarray  # (n_labs,)
    type_probs: np.ndarray  # (n_labs, n_types)
    marker_of: np.ndarray  # (n_genes,) type index of a marker gene, -1 otherwise
    noise: float
    theta: float
    lab_effect: float


def _make_world(
    *,
    n_genes: int,
    n_types: int,
    n_labs: int,
    lab_effect: float,
    confounded: bool,
    noise: float,
    library_size: float,
    theta: float,
    seed: int,
) -> _World:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    base = rng.normal(0.0, 1.5, n_genes)
    n_markers = max(1, min(round(MARKER_FRACTION * n_genes), n_genes // n_types))
    order = rng.permutation(n_genes)
    profiles = np.tile(base, (n_types, 1))
    marker_of = np.full(n_genes, -1, dtype=np.int64)
    for t in range(n_types):
        genes = order[t * n_markers : (t + 1) * n_markers]
        marker_of[genes] = t
        profiles[t, genes] += rng.uniform(1.0, 2.5, len(genes))
    lab_scale = np.exp(0.25 * lab_effect * rng.normal(size=(n_labs, n_genes)))
    lab_shift = lab_effect * rng.normal(size=(n_labs, n_genes))
    lab_log_depth = np.log(library_size) + 0.3 * lab_effect * rng.normal(size=n_labs)
    proportions = rng.dirichlet(np.full(n_types, 8.0))
    type_probs = np.tile(proportions, (n_labs, 1))
    if confounded:
        type_probs[1:, n_types - 1] = 0.0
        type_probs /= type_probs.sum(axis=1, keepdims=True)
    return _World(
        type_profiles=profiles,
        lab_scale=lab_scale,
        lab_shift=lab_shift,
        lab_log_depth=lab_log_depth,
        type_probs=type_probs,
        marker_of=marker_of,
        noise=noise,
        theta=theta,
        lab_effect=lab_effect,
    )


def _sample_block(world: _World, n: int, seed: int, block: int) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """``n`` cells of block ``block``: float32 CSR counts, type codes, lab codes."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1, block]))
    n_labs, n_genes = world.lab_shift.shape
    labs = rng.integers(0, n_labs, n)
    cumulative = np.cumsum(world.type_probs[labs], axis=1)
    types = (rng.random(n)[:, None] > cumulative).sum(axis=1)
    types = np.minimum(types, world.type_probs.shape[1] - 1)
    x = world.lab_scale[labs] * world.type_profiles[types] + world.lab_shift[labs]
    if world.noise > 0:
        x += rng.normal(0.0, world.noise, (n, n_genes))
    x -= x.max(axis=1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=1, keepdims=True)
    library = np.exp(world.lab_log_depth[labs] + 0.25 * rng.normal(size=n))
    x *= library[:, None]
    counts = rng.negative_binomial(world.theta, world.theta / (world.theta + x))
    return sp.csr_matrix(counts.astype(np.float32)), types, labs


def _blocks(world: _World, n_cells: int, seed: int) -> Iterator[tuple[sp.csr_matrix, np.ndarray, np.ndarray]]:
    for block, start in enumerate(range(0, n_cells, BLOCK_CELLS)):
        yield _sample_block(world, min(BLOCK_CELLS, n_cells - start), seed, block)


def _lognormalize(counts: sp.csr_matrix) -> sp.csr_matrix:
    """The counts as a model's input would see them: log1p of counts per ``Preprocessing().target_sum``."""
    return log_normalize_sparse(counts, Preprocessing().target_sum)


def _names(prefix: str, n: int) -> list[str]:
    width = len(str(max(n - 1, 0)))
    return [f"{prefix}_{i:0{width}d}" for i in range(n)]


def _check(
    n_cells: int,
    n_genes: int,
    n_types: int,
    n_labs: int,
    lab_effect: float,
    confounded: bool,
    noise: float,
    library_size: float,
    theta: float,
) -> None:
    """Raise ``ValueError`` for parameters that cannot make a data set."""
    if n_cells < 1 or n_genes < 1 or n_types < 1 or n_labs < 1:
        raise ValueError(
            f"n_cells, n_genes, n_types and n_labs must be positive (got {n_cells}, {n_genes}, {n_types}, {n_labs})"
        )
    if n_genes < n_types:
        raise ValueError(f"n_genes ({n_genes}) must be at least n_types ({n_types}): each type needs a marker gene")
    if confounded and (n_labs < 2 or n_types < 2):
        raise ValueError("confounded=True needs at least 2 labs and 2 cell types")
    if lab_effect < 0 or noise < 0:
        raise ValueError(f"lab_effect and noise must be >= 0 (got {lab_effect}, {noise})")
    if library_size <= 0 or theta <= 0:
        raise ValueError(f"library_size and theta must be positive (got {library_size}, {theta})")


def make_multilab(
    n_cells: int = 2000,
    n_genes: int = 500,
    n_types: int = 5,
    n_labs: int = 3,
    lab_effect: float = 0.5,
    confounded: bool = False,
    noise: float = 0.3,
    seed: int = 0,
    as_counts: bool = True,
    *,
    library_size: float = 1500.0,
    theta: float = 5.0,
) -> anndata.AnnData:
    """A synthetic multi-lab data set held in memory (see the module docstring for the model).

    Args:
        n_cells, n_genes: size.
        n_types: cell types ``type_0``... (``obs['cell_type']``).
        n_labs: labs ``lab_0``... (``obs['batch']``), cells spread uniformly over them.
        lab_effect: strength of the gene-wise lab distortion (0: none; 1: strong).
        confounded: the last cell type is only in ``lab_0``.
        noise: standard deviation of the per-cell log-scale noise.
        seed: everything is a deterministic function of the seed and the parameters.
        as_counts: raw negative-binomial counts; ``False`` gives them log-normalized as a model's input
            (:func:`model.preprocessing.log_normalize_sparse`, the default ``Preprocessing`` target sum).
        library_size: typical counts per cell.
        theta: negative-binomial inverse dispersion (larger: closer to Poisson).

    Returns:
        AnnData with float32 CSR ``X``, categorical ``obs['cell_type']`` and ``obs['batch']``,
        ``var['marker_of']`` (the type a gene marks, ``""`` for none) and the parameters in
        ``uns['synthetic']``.
    """
    _check(n_cells, n_genes, n_types, n_labs, lab_effect, confounded, noise, library_size, theta)
    params = dict(
        n_genes=n_genes,
        n_types=n_types,
        n_labs=n_labs,
        lab_effect=lab_effect,
        confounded=confounded,
        noise=noise,
        library_size=library_size,
        theta=theta,
        seed=seed,
    )
    world = _make_world(**params)
    parts = list(_blocks(world, n_cells, seed))
    X = sp.vstack([p[0] for p in parts], format="csr")
    if not as_counts:
        X = _lognormalize(X)
    types = np.concatenate([p[1] for p in parts])
    labs = np.concatenate([p[2] for p in parts])
    return anndata.AnnData(
        X=X,
        obs=_obs(types, labs, n_types, n_labs, _names("cell", n_cells)),
        var=_var(world, n_types),
        uns={"synthetic": params | {"n_cells": n_cells, "as_counts": as_counts}},
    )


def write_synthetic_h5ad(
    path: str | os.PathLike[str],
    n_cells: int,
    n_genes: int = 2000,
    chunk_size: int = 16384,
    seed: int = 0,
    *,
    compression: str | None = None,
    **kwargs: Any,
) -> Path:
    """Write :func:`make_multilab`'s data set (same arguments, same cells) to ``path`` in chunks.

    Memory stays flat in the number of cells apart from the per-cell annotations: cells are generated
    :data:`BLOCK_CELLS` at a time and the CSR arrays are appended with h5py, ``chunk_size`` cells per
    write, in anndata's on-disk layout (``indptr`` is int64, so any size fits), then ``obs``, ``var``
    and ``uns`` are written with :func:`anndata.io.write_elem`. The file reads back with
    :func:`anndata.read_h5ad`, in full or with ``backed="r"``.

    Args:
        path: the ``.h5ad`` file to create (overwritten).
        n_cells, n_genes, seed: as in :func:`make_multilab`.
        chunk_size: cells per write (does not change the data).
        compression: HDF5 compression of X (``None``: uncompressed, fastest to read; or ``"gzip"``, ``"lzf"``).
        kwargs: the other arguments of :func:`make_multilab` (n_types, n_labs, lab_effect, ...).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive (got {chunk_size})")
    n_types = kwargs.pop("n_types", 5)
    n_labs = kwargs.pop("n_labs", 3)
    as_counts = kwargs.pop("as_counts", True)
    options = dict(lab_effect=0.5, confounded=False, noise=0.3, library_size=1500.0, theta=5.0)
    unknown = set(kwargs) - set(options)
    if unknown:
        raise TypeError(f"unknown argument(s) for write_synthetic_h5ad: {', '.join(sorted(unknown))}")
    options.update(kwargs)
    _check(n_cells, n_genes, n_types, n_labs, **options)
    params = dict(n_genes=n_genes, n_types=n_types, n_labs=n_labs, seed=seed, **options)
    world = _make_world(**params)
    path = Path(path)
    types = np.empty(n_cells, dtype=np.int64)
    labs = np.empty(n_cells, dtype=np.int64)
    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        group = f.create_group("X")
        group.attrs["encoding-type"] = "csr_matrix"
        group.attrs["encoding-version"] = "0.1.0"
        group.attrs["shape"] = np.array([n_cells, n_genes], dtype=np.int64)
        storage = dict(maxshape=(None,), chunks=(1 << 18,), compression=compression)
        data = group.create_dataset("data", shape=(0,), dtype=np.float32, **storage)
        indices = group.create_dataset("indices", shape=(0,), dtype=np.int32, **storage)
        indptr = group.create_dataset("indptr", shape=(n_cells + 1,), dtype=np.int64)
        indptr[0] = 0
        pending: list[sp.csr_matrix] = []
        row = nnz = 0
        for block, block_types, block_labs in _blocks(world, n_cells, seed):
            types[row : row + block.shape[0]] = block_types
            labs[row : row + block.shape[0]] = block_labs
            row += block.shape[0]
            pending.append(block if as_counts else _lognormalize(block))
            if sum(p.shape[0] for p in pending) >= chunk_size or row == n_cells:
                chunk = sp.vstack(pending, format="csr")
                pending = []
                start_row = row - chunk.shape[0]
                data.resize((nnz + chunk.nnz,))
                indices.resize((nnz + chunk.nnz,))
                data[nnz:] = chunk.data
                indices[nnz:] = chunk.indices
                indptr[start_row + 1 : row + 1] = chunk.indptr[1:].astype(np.int64) + nnz
                nnz += chunk.nnz
        write_elem(f, "obs", _obs(types, labs, n_types, n_labs, _names("cell", n_cells)))
        write_elem(f, "var", _var(world, n_types))
        write_elem(f, "uns", {"synthetic": params | {"n_cells": n_cells, "as_counts": as_counts}})
        for name in ("layers", "obsm", "obsp", "varm", "varp"):
            write_elem(f, name, {})
    return path


def _obs(types: np.ndarray, labs: np.ndarray, n_types: int, n_labs: int, index: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "cell_type": pd.Categorical.from_codes(types, _names("type", n_types)),
            "batch": pd.Categorical.from_codes(labs, _names("lab", n_labs)),
        },
        index=pd.Index(index, name=None),
    )


def _var(world: _World, n_types: int) -> pd.DataFrame:
    type_names = np.array(_names("type", n_types) + [""], dtype=object)
    n_genes = len(world.marker_of)
    return pd.DataFrame({"marker_of": type_names[world.marker_of]}, index=_names("gene", n_genes))

