"""Fixtures of the across-hosts tests: two network namespaces joined by a veth pair, and a small data set.

Without root or ``ip netns`` the tests are skipped with the reason, except under ``CI=true`` where
they fail: CI must run them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.multihost import NamespacePair, NetnsUnavailable, create_pair, unavailable_reason

REPO = Path(__file__).resolve().parents[2]


def node_env(**overrides: str) -> dict[str, str]:
    """The environment of a process on a "host": this one, one CPU thread, no tracking URI, venv first."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env.update(overrides)
    return env


def skip_without_namespaces(reason: str | None) -> None:
    """Skip the test when ``reason`` says namespaces cannot be made (fail instead under ``CI=true``)."""
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"across-hosts tests cannot run: {reason}")
    pytest.skip(f"across-hosts tests need network namespaces: {reason}")


@pytest.fixture(scope="module")
def hosts() -> Iterator[NamespacePair]:
    """Two namespaces (``hosts.first``, ``hosts.second``), deleted with their processes afterwards."""
    skip_without_namespaces(unavailable_reason())
    try:
        pair = create_pair()
    except NetnsUnavailable as exc:
        skip_without_namespaces(str(exc))
    try:
        yield pair
    finally:
        pair.close()


@pytest.fixture(scope="module")
def labeled_h5ad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 cells x 120 genes, 4 cell types, 3 labs (``obs['batch']``), raw counts, in one file."""
    from training.synthetic import make_multilab

    path = tmp_path_factory.mktemp("multihost-data") / "multilab.h5ad"
    make_multilab(n_cells=600, n_genes=120, n_types=4, n_labs=3, seed=1).write_h5ad(path)
    return path
