"""Settings from CELLTYPE_* variables and the ``celltype serve`` command line."""

from __future__ import annotations

import argparse

import pytest
from pydantic import ValidationError

from model.errors import InputError
from service.cli import add_commands, settings_from_args
from service.settings import Settings


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_environment_variables_configure_the_service(monkeypatch):
    monkeypatch.setenv("CELLTYPE_MODEL_URI", "models:/pbmc@champion")
    monkeypatch.setenv("CELLTYPE_MAX_CELLS_PER_REQUEST", "123")
    monkeypatch.setenv("CELLTYPE_API_KEY", "k-secret-123")
    monkeypatch.setenv("CELLTYPE_RELOAD_INTERVAL_S", "30")
    monkeypatch.setenv("CELLTYPE_LOG_LEVEL", "WARNING")
    settings = Settings()
    assert settings.model_uri == "models:/pbmc@champion" and settings.max_cells_per_request == 123
    assert settings.api_key.get_secret_value() == "k-secret-123" and "k-secret-123" not in repr(settings)
    assert settings.reload_interval_s == 30 and settings.log_level == "warning"
    assert Settings(**{k.removeprefix("CELLTYPE_").lower(): v for k, v in settings.environment().items()}) == settings


def test_an_empty_api_key_means_no_key(monkeypatch):
    monkeypatch.setenv("CELLTYPE_API_KEY", "  ")
    assert Settings().api_key is None


@pytest.mark.parametrize(
    "overrides", [{"log_level": "loud"}, {"port": 70000}, {"max_concurrency": 0}, {"min_gene_overlap": 1.5}, {"device": "tpu"}]
)
def test_invalid_settings_are_refused(overrides):
    with pytest.raises(ValidationError):
        Settings(**overrides)


def test_command_line_overrides_the_environment(monkeypatch):
    monkeypatch.setenv("CELLTYPE_PORT", "9000")
    monkeypatch.setenv("CELLTYPE_HOST", "0.0.0.0")
    settings = settings_from_args(parse("--model", "bundle/", "--port", "8123", "--workers", "2"))
    assert (settings.model_uri, settings.port, settings.host, settings.workers) == ("bundle/", 8123, "0.0.0.0", 2)


def test_a_model_is_required(monkeypatch):
    monkeypatch.delenv("CELLTYPE_MODEL_URI", raising=False)
    with pytest.raises(InputError, match="no model to serve"):
        settings_from_args(parse())


def test_bad_options_are_one_line_errors():
    with pytest.raises(InputError, match=r"invalid settings \(port: "):
        settings_from_args(parse("--model", "x", "--port", "-1"))
    with pytest.raises(InputError, match="workers"):
        settings_from_args(parse("--model", "x", "--workers", "0"))
