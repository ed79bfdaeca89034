"""Fixtures for the service tests: a small bundled model, the app under TestClient, a slow fake model."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from model.bundle import ModelBundle, save_bundle
from model.predict import Annotation, Predictor
from service.app import create_app
from service.settings import Settings
from tests.factories import CLASSES, GENES, random_bundle, random_counts


def make_bundle(
    seed: int = 0,
    *,
    genes: list[str] | None = None,
    classes: list[str] | None = None,
    threshold: float = 0.3,
) -> ModelBundle:
    """A classifier with random weights and non-trivial running statistics, bundled with the metadata the
    service shows (datasets, labs, hold-out scores, training time)."""
    return random_bundle(
        list(genes or GENES),
        list(classes or CLASSES),
        seed=seed,
        input_mean_scale=2.0,
        temperature=1.3,
        unknown_threshold=threshold,
        metadata={
            "datasets": ["synthetic"],
            "train_batches": ["lab1", "lab2"],
            "holdout_batches": ["lab3"],
            "holdout_scores": {"accuracy": 0.9, "macro_f1": 0.85},
            "trained_at": "2026-01-01T00:00:00+00:00",
        },
    )


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle saved to disk once per session (read-only: tests that change bundles make their own)."""
    path = tmp_path_factory.mktemp("service") / "bundle"
    save_bundle(make_bundle(), path)
    return path


@pytest.fixture(scope="session")
def predictor(bundle_dir: Path) -> Predictor:
    """The same model, in-process."""
    return Predictor.load(bundle_dir, device="cpu")


@pytest.fixture
def counts(seed: int) -> np.ndarray:
    """Raw counts for 30 cells over the model's genes."""
    return random_counts(30, seed=seed + 1)


def start_client(settings: Settings, **kwargs: Any) -> TestClient:
    """A TestClient whose app has gone through start-up (the caller exits it)."""
    client = TestClient(create_app(settings, **kwargs))
    client.__enter__()
    return client


@pytest.fixture
def make_client(bundle_dir: Path) -> Iterator[Callable[..., TestClient]]:
    """Factory: a started TestClient for ``create_app(Settings(model_uri=bundle_dir, ...overrides))``."""
    clients: list[TestClient] = []

    def factory(*, predictor: Predictor | None = None, loader: Any = None, **overrides: Any) -> TestClient:
        settings = Settings(**{"model_uri": str(bundle_dir), "device": "cpu", **overrides})
        clients.append(start_client(settings, predictor=predictor, loader=loader))
        return clients[-1]

    yield factory
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture(scope="session")
def client(bundle_dir: Path) -> Iterator[TestClient]:
    """The app serving the bundle with default settings, shared by the session (do not count its metrics)."""
    shared = start_client(Settings(model_uri=str(bundle_dir), device="cpu"))
    yield shared
    shared.__exit__(None, None, None)


class BlockingPredictor(Predictor):
    """A real model whose ``annotate`` waits until :attr:`release` is set (for 503/504 tests)."""

    def __init__(self, bundle: ModelBundle) -> None:
        super().__init__(bundle, device="cpu")
        self.release = threading.Event()
        self.entered = threading.Event()

    def annotate(self, *args: Any, **kwargs: Any) -> Annotation:
        """Signal entry, wait for the release, then annotate for real."""
        self.entered.set()
        self.release.wait(timeout=30)
        return super().annotate(*args, **kwargs)


@pytest.fixture
def blocking_predictor() -> Iterator[BlockingPredictor]:
    """A :class:`BlockingPredictor`, released at teardown whatever happened."""
    predictor = BlockingPredictor(make_bundle())
    yield predictor
    predictor.release.set()


def predict_body(cells: np.ndarray, genes: list[str] | None = None, **options: Any) -> dict[str, Any]:
    """A /v1/predict JSON body."""
    return {"genes": list(genes or GENES), "cells": np.asarray(cells).tolist(), **options}


def assert_client_error(response: Any, status: int, *fragments: str) -> None:
    """``response`` is ``status`` with a ``detail`` containing every fragment and no traceback."""
    assert response.status_code == status, response.text
    body = response.json()
    assert "detail" in body, body
    text = str(body["detail"])
    for fragment in fragments:
        assert fragment in text, text
    assert "Traceback" not in response.text
