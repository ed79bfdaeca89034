"""Tests for the pickle-free model bundle."""

import json

import pytest
import torch

from model.bundle import BUNDLE_FORMAT, MANIFEST_FILE, WEIGHTS_FILE, file_sha256, load_bundle, save_bundle
from model.errors import BundleError


def test_round_trip_keeps_everything(bundle, bundle_dir):
    loaded = load_bundle(bundle_dir)
    assert loaded.genes == bundle.genes and loaded.classes == bundle.classes
    assert loaded.config == bundle.config and loaded.preprocessing == bundle.preprocessing
    assert loaded.temperature == 1.5 and loaded.unknown_threshold == 0.4
    assert loaded.metadata == {"train_batches": ["lab1", "lab2"]}
    assert loaded.sha256 == bundle.sha256 == file_sha256(bundle_dir / MANIFEST_FILE)
    for key, value in bundle.state_dict.items():
        torch.testing.assert_close(loaded.state_dict[key], value)
    x = torch.randn(4, len(bundle.genes))
    torch.testing.assert_close(loaded.build_model()(x), bundle.build_model()(x))


def test_manifest_is_plain_json_without_pickles(bundle_dir):
    manifest = json.loads((bundle_dir / MANIFEST_FILE).read_text())
    assert manifest["format"] == BUNDLE_FORMAT
    assert manifest["weights"]["sha256"] == file_sha256(bundle_dir / WEIGHTS_FILE)
    assert sorted(p.name for p in bundle_dir.iterdir()) == [MANIFEST_FILE, WEIGHTS_FILE]


def test_tampered_weights_fail_the_checksum(bundle_dir):
    data = bytearray((bundle_dir / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0xFF
    (bundle_dir / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="weights were modified"):
        load_bundle(bundle_dir)


def test_expected_digest_is_checked(bundle_dir):
    with pytest.raises(BundleError, match="modified after registration"):
        load_bundle(bundle_dir, expected_sha256="0" * 64)


@pytest.mark.parametrize("missing", [MANIFEST_FILE, WEIGHTS_FILE])
def test_missing_file_is_a_clear_error(bundle_dir, missing):
    (bundle_dir / missing).unlink()
    with pytest.raises(BundleError, match=f"{missing} is missing"):
        load_bundle(bundle_dir)


def test_unknown_format_and_missing_directory(tmp_path, bundle_dir):
    manifest = json.loads((bundle_dir / MANIFEST_FILE).read_text())
    manifest["format"] = "celltype-bundle/99"
    (bundle_dir / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="celltype-bundle/99"):
        load_bundle(bundle_dir)
    with pytest.raises(BundleError, match="not a directory"):
        load_bundle(tmp_path / "nope")


def test_save_replaces_an_existing_bundle(tmp_path, bundle):
    target = tmp_path / "b"
    save_bundle(bundle, target)
    bundle.temperature = 2.0
    save_bundle(bundle, target)
    assert load_bundle(target).temperature == 2.0
    assert [p.name for p in tmp_path.iterdir()] == ["b"]
