"""The CellTypist 1.7.1 peer, run as its users run it, in its own environment.

CellTypist 1.7.1 crashes with scikit-learn >= 1.8, so it lives in a ``pip --target`` folder with
``scikit-learn<1.8`` (by default ``~/.cache/celltype-bench/celltypist-1.7.1``, or
``$CELLTYPE_BENCH_CACHE/celltypist-1.7.1``), installed there on first use, and runs in a subprocess
with that folder first on ``PYTHONPATH``. Each fold's model is trained with ``celltypist.train`` on
the fold's training cells (its defaults; no model is downloaded) and applied with
``celltypist.annotate`` (no majority voting), on log1p(CP10k) values.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

CELLTYPIST_VERSION = "1.7.1"
CACHE_ENV = "CELLTYPE_BENCH_CACHE"
"""Environment variable naming the benchmark cache folder (default ``~/.cache/celltype-bench``)."""

FOLD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import anndata, numpy as np, pandas as pd, scipy.sparse as sp
    import celltypist

    folds = json.loads(open(sys.argv[1]).read())
    out = {}
    for fold in folds:
        arrays = np.load(fold["npz"], allow_pickle=False)
        genes = pd.Index(arrays["genes"].astype(str))
        def adata(prefix):
            # rows to exactly log1p(CP10k), as CellTypist checks (a no-op for data already CP10k over all
            # genes; rescales pre-normalized panels such as scclassify_pancreas)
            counts = np.expm1(arrays[prefix + "_X"].astype(np.float64))
            counts *= 1e4 / np.maximum(counts.sum(axis=1, keepdims=True), 1e-12)
            X = sp.csr_matrix(np.log1p(counts).astype(np.float32))
            return anndata.AnnData(X=X, obs=pd.DataFrame(index=[f"c{i}" for i in range(X.shape[0])]),
                                   var=pd.DataFrame(index=genes))
        train = adata("train")
        train.obs["cell_type"] = arrays["train_y"].astype(str)
        model = celltypist.train(train, labels="cell_type", n_jobs=1, check_expression=False)
        result = celltypist.annotate(adata("test"), model=model, majority_voting=False)
        out[fold["key"]] = result.predicted_labels["predicted_labels"].astype(str).tolist()
    print(json.dumps(out))
    """
)


def default_env_dir() -> Path:
    """``$CELLTYPE_BENCH_CACHE/celltypist-<version>``, else ``~/.cache/celltype-bench/celltypist-<version>``."""
    cache = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "celltype-bench")
    return cache / f"celltypist-{CELLTYPIST_VERSION}"


def celltypist_env(env_dir: Path | None = None) -> dict[str, str]:
    """Environment variables running Python with CellTypist from ``env_dir``, installing it there once.

    Raises:
        RuntimeError: pip could not install it (no access to a package index).
    """
    env_dir = Path(env_dir) if env_dir is not None else default_env_dir()
    if not (env_dir / "celltypist").is_dir():
        print(f"installing CellTypist {CELLTYPIST_VERSION} into {env_dir} (once) ...", file=sys.stderr, flush=True)
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--target", str(env_dir),
             f"celltypist=={CELLTYPIST_VERSION}", "scikit-learn<1.8"],
            capture_output=True, text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"could not install CellTypist into {env_dir}: {done.stderr[-1000:]}")
    return dict(os.environ, PYTHONPATH=str(env_dir))


def celltypist_folds(
    folds: list[dict[str, Any]], env_dir: Path | None = None, timeout: float = 3600
) -> dict[str, list[str]]:
    """CellTypist's predicted labels for each fold ``{"key", "genes", "train_X", "train_y", "test_X"}``.

    ``train_X``/``test_X`` are log1p-normalized values over ``genes``. All folds run in one subprocess
    (CellTypist imports once).

    Raises:
        RuntimeError: CellTypist failed (its last output is in the message).
    """
    env = celltypist_env(env_dir)
    with tempfile.TemporaryDirectory(prefix="celltypist_folds_") as tmp:
        specs = []
        for i, fold in enumerate(folds):
            path = Path(tmp) / f"fold{i}.npz"
            np.savez(
                path,
                genes=np.asarray(fold["genes"], dtype=str),
                train_X=np.asarray(fold["train_X"], dtype=np.float32),
                train_y=np.asarray(fold["train_y"], dtype=str),
                test_X=np.asarray(fold["test_X"], dtype=np.float32),
            )
            specs.append({"key": fold["key"], "npz": str(path)})
        spec_path = Path(tmp) / "folds.json"
        spec_path.write_text(json.dumps(specs))
        script = Path(tmp) / "run_celltypist.py"
        script.write_text(FOLD_SCRIPT)
        done = subprocess.run(
            [sys.executable, str(script), str(spec_path)],
            env=env, capture_output=True, text=True, timeout=timeout, cwd=tmp,
        )
    if done.returncode != 0:
        raise RuntimeError(f"CellTypist failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
