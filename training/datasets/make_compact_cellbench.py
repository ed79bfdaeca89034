"""Derive the bundled compact CellBench copy (``cellbench.h5ad`` here) from the shared full set.

Run from the repository root::

    python -m training.datasets.make_compact_cellbench ../shared/data/h5ad/cellbench.h5ad \
        training/datasets/cellbench.h5ad

Keeps every cell, the obs columns ``cell_type``, ``batch`` and ``protocol``, ``var['gene_id']`` and
``uns``, and the :data:`N_GENES` genes ranked first by :func:`training.genes.select_genes`
(``hvg_batch_aware``, label-free) in their original column order; the raw counts of those genes are
copied unchanged (float32, as in the source). X is gzip-compressed (level 9, byte shuffle). Prints
the file's size and sha256 (recorded in ``PROVENANCE.md``).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import anndata
import h5py
import numpy as np
from anndata.io import write_elem

from training.data import load_labeled
from training.genes import select_genes

N_GENES = 3000
"""Genes kept: all 11,533 do not fit well under 5 MB (about 5.5 MB at best); 3,000 take about 3.7 MB."""

OBS_COLUMNS = ["cell_type", "batch", "protocol"]


def make_compact(source: Path, target: Path) -> str:
    """Write the compact copy of ``source`` to ``target`` and return its sha256."""
    data, _ = load_labeled(source)
    keep = set(select_genes(data, N_GENES, "hvg_batch_aware"))
    full = anndata.read_h5ad(source)
    columns = np.flatnonzero(full.var_names.isin(list(keep)))
    compact = anndata.AnnData(
        X=full.X[:, columns].tocsr(),
        obs=full.obs[OBS_COLUMNS].copy(),
        var=full.var.iloc[columns].copy(),
        uns=dict(full.uns)
        | {
            "derivation": f"compact copy: all {full.n_obs} cells, the {N_GENES} top-ranked genes of "
            "training.genes.select_genes(method='hvg_batch_aware') in source order, counts unchanged; "
            "see training/datasets/PROVENANCE.md"
        },
    )
    packed = {"compression": "gzip", "compression_opts": 9, "shuffle": True}
    with h5py.File(target, "w") as f:  # anndata's layout; uns holds scalars, which take no filters
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        for key in ("X", "obs", "var"):
            write_elem(f, key, getattr(compact, key), dataset_kwargs=packed)
        write_elem(f, "uns", dict(compact.uns))
        for key in ("layers", "obsm", "obsp", "varm", "varp"):
            write_elem(f, key, {})
    return hashlib.sha256(target.read_bytes()).hexdigest()


def main() -> None:
    """Command-line entry: ``SOURCE TARGET``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the full cellbench.h5ad")
    parser.add_argument("target", type=Path, help="where to write the compact copy")
    args = parser.parse_args()
    digest = make_compact(args.source, args.target)
    print(f"{args.target}: {args.target.stat().st_size:,} bytes, sha256 {digest}")


if __name__ == "__main__":
    main()
