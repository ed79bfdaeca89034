"""Peer classifiers run on the same leave-one-lab-out folds and cells as ours, in the same run.

- :func:`logistic_regression_fold` (:mod:`benchmarks.peers.logreg`): scikit-learn logistic regression
  on log1p(CP10k) genes, z-scored with the training cells' statistics.
- :func:`celltypist_folds` (:mod:`benchmarks.peers.celltypist`): CellTypist 1.7.1 trained on each fold's
  training cells (never a downloaded model), in a subprocess with CellTypist from its own
  ``pip --target`` folder, installed there on first use by :func:`celltypist_env`.
"""

from benchmarks.peers.celltypist import CELLTYPIST_VERSION, celltypist_env, celltypist_folds
from benchmarks.peers.logreg import logistic_regression_fold

__all__ = ["CELLTYPIST_VERSION", "celltypist_env", "celltypist_folds", "logistic_regression_fold"]
