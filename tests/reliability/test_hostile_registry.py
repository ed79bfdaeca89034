"""Hostile registry content: pickle payloads are never executed, tampered weights are refused, model URIs
cannot climb out of their directories."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.reliability.hostile_registry import (
    TRAVERSAL_URIS,
    path_traversal_refused,
    pickle_never_executed,
    tampered_weights_refused,
)
from model.errors import InputError
from model.registry import parse_model_uri
from tests.conftest import MlflowStore


def test_a_pickle_payload_next_to_the_bundle_is_never_executed(
    mlflow_sqlite_store: MlflowStore, bundle_cache: Path, tmp_path: Path
) -> None:
    """A registered version whose pyfunc is a pickle that creates a marker file when unpickled: loading it
    through Predictor and the service never creates the file (only the two bundle files are fetched), a
    version without the digest tag, a pickle posing as weights and a pickled checkpoint are refused; the
    control, ``mlflow.pyfunc.load_model`` on the same version, does create it."""
    outcome = pickle_never_executed(tmp_path, mlflow_sqlite_store.uri)

    assert outcome.passed, outcome.detail
    assert outcome.numbers["files_fetched"] == ["manifest.json", "model.safetensors"]
    assert outcome.numbers["payload_ran_under_mlflow_pyfunc_load_model"] is True


def test_tampered_weights_fail_the_checksum_and_the_old_model_keeps_serving(
    mlflow_sqlite_store: MlflowStore, bundle_cache: Path, tmp_path: Path
) -> None:
    """One flipped byte in a registered model.safetensors: the reload onto it is refused with 409 naming the
    checksum, the previous version keeps serving, and Predictor.load refuses it too."""
    outcome = tampered_weights_refused(tmp_path, mlflow_sqlite_store.uri)

    assert outcome.passed, outcome.detail
    assert outcome.numbers["reload_status"] == 409


@pytest.mark.parametrize("uri", TRAVERSAL_URIS)
def test_traversal_in_model_uris_is_refused_before_any_io(uri: str) -> None:
    """``models:/../x``, ``models:/a/../../b`` and friends are malformed URIs, not paths."""
    with pytest.raises(InputError):
        parse_model_uri(uri)


def test_serve_and_score_refuse_traversal_uris_with_a_one_line_error(tmp_path: Path) -> None:
    """``celltype serve --model URI`` and ``celltype score --model URI`` exit with code 2 and one line, and
    open no registry and write nothing to the bundle cache."""
    outcome = path_traversal_refused(tmp_path)

    assert outcome.passed, outcome.detail
    assert outcome.numbers["refused"] == 2 * len(TRAVERSAL_URIS)
