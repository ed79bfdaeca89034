"""Fixtures of the scoring tests: a bundle over :data:`files.MODEL_GENES`, a counts file, and ``celltype score``."""

from __future__ import annotations

from pathlib import Path

import pytest

import cli.main

from .files import make_bundle_dir, make_counts, write_h5ad


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    return make_bundle_dir(tmp_path_factory.mktemp("model") / "bundle")


@pytest.fixture(scope="module")
def counts_file(tmp_path_factory) -> Path:
    X, genes = make_counts()
    return write_h5ad(tmp_path_factory.mktemp("data") / "counts.h5ad", X, genes)


@pytest.fixture
def celltype():
    """``celltype score ARGS...`` in this process, returning its exit code."""
    return lambda *args: cli.main.main(["score", *(str(a) for a in args)])
