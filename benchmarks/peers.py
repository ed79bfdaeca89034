"""Peer classifiers for the evidence report, scored on the same leave-one-batch-out folds as ours.

- :func:`logistic_regression_fold`: scikit-learn logistic regression on log1p(CP10k) values over all
  genes, standardized with the training cells' mean and standard deviation (clipped at ±10).
- :func:`celltypist_folds`: CellTypist 1.7.1 as its users run it (``celltypist.train`` and
  ``celltypist.annotate`` with their defaults, no majority voting) on log1p(CP10k) values, in a
  subprocess with CellTypist from a separate ``pip --target`` folder (it needs scikit-learn < 1.8;
  :func:`benchmarks.bench_scoring.celltypist_python` installs it there once).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

CELLTYPIST_FOLD_SCRIPT = textwrap.dedent(
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
            return anndata.AnnData(
                X=X, obs=pd.DataFrame({"cell_type": arrays[prefix + "_y"].astype(str)},
                index=[f"c{i}" for i in range(X.shape[0])]), var=pd.DataFrame(index=genes))
        train = adata("train")
        model = celltypist.train(train, labels="cell_type", n_jobs=1, check_expression=False)
        result = celltypist.annotate(adata("test"), model=model, majority_voting=False)
        out[fold["key"]] = result.predicted_labels["predicted_labels"].astype(str).tolist()
    print(json.dumps(out))
    """
)


def lognorm_cp10k(data: Any, rows: np.ndarray) -> np.ndarray:
    """log1p(CP10k) values of ``rows`` of a :class:`training.data.LabeledData` (as given when already log-normalized)."""
    return data.model_input(rows)


def logistic_regression_fold(train_X: np.ndarray, train_y: np.ndarray, test_X: np.ndarray, seed: int = 0) -> np.ndarray:
    """Predicted labels of ``test_X`` by a standardized multinomial logistic regression fitted on the training cells."""
    from sklearn.linear_model import LogisticRegression

    mean = train_X.mean(axis=0)
    std = train_X.std(axis=0)
    std[std < 1e-3] = 1.0
    model = LogisticRegression(max_iter=300, C=0.1, random_state=seed)
    model.fit(np.clip((train_X - mean) / std, -10, 10), train_y)
    return model.predict(np.clip((test_X - mean) / std, -10, 10))


def celltypist_folds(
    folds: list[dict[str, Any]], env_dir: Path, timeout: float = 3600
) -> dict[str, list[str]]:
    """CellTypist's predicted labels for each fold ``{"key", "train_X", "train_y", "test_X", "genes"}``.

    All folds run in one subprocess (CellTypist imports once).
    """
    from benchmarks.bench_scoring import celltypist_python

    env = celltypist_python(env_dir)
    with tempfile.TemporaryDirectory(prefix="celltypist_folds_") as tmp:
        specs = []
        for i, fold in enumerate(folds):
            path = Path(tmp) / f"fold{i}.npz"
            np.savez(
                path,
                genes=np.asarray(fold["genes"], dtype=str),
                train_X=fold["train_X"].astype(np.float32),
                train_y=np.asarray(fold["train_y"], dtype=str),
                test_X=fold["test_X"].astype(np.float32),
                test_y=np.zeros(len(fold["test_X"]), dtype=str),
            )
            specs.append({"key": fold["key"], "npz": str(path)})
        spec_path = Path(tmp) / "folds.json"
        spec_path.write_text(json.dumps(specs))
        script = Path(tmp) / "run_celltypist.py"
        script.write_text(CELLTYPIST_FOLD_SCRIPT)
        done = subprocess.run(
            [sys.executable, str(script), str(spec_path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=tmp,
        )
    if done.returncode != 0:
        raise RuntimeError(f"CellTypist failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
