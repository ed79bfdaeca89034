"""Fixtures of the reliability suite: small random models, a live ``celltype serve`` with an API key.

The scenarios themselves live in :mod:`benchmarks.reliability`, which runs their long versions; these
tests run the same functions with sizes that keep each file well under a minute.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.reliability.harness import Service, start_service
from benchmarks.reliability.inputs import save_random_bundle

N_GENES = 200
"""Genes of the random models served here."""
BODY_LIMIT = 8 * 1024 * 1024
"""``CELLTYPE_MAX_BODY_BYTES`` of the live service."""


@pytest.fixture(scope="session")
def random_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 200-gene, 5-class bundle saved once per session (read-only)."""
    return save_random_bundle(tmp_path_factory.mktemp("reliability") / "bundle", N_GENES)


@pytest.fixture(scope="module")
def live_service(random_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """``celltype serve`` on a loopback port with an API key and an 8 MiB body limit, for one test module."""
    service = start_service(
        str(random_bundle_dir),
        tmp_path_factory.mktemp("live-service"),
        settings={"CELLTYPE_API_KEY": secrets.token_urlsafe(24), "CELLTYPE_MAX_BODY_BYTES": str(BODY_LIMIT)},
    )
    yield service
    service.stop()
