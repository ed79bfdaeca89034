"""The model bundle: a directory holding weights in safetensors and a JSON manifest. Never a pickle.

Layout::

    BUNDLE/
      manifest.json       format, classifier config, genes (and gene_identifiers: the same genes
                          by other var columns), classes, preprocessing, calibration,
                          the Unknown checks (``novelty``, ``min_detected_genes``), training metadata
                          and the sha256 of the weights file
      model.safetensors   the classifier's state dict (tensors only), and the novelty detector's
                          arrays under keys ``novelty/<name>``

Bundles written before the Unknown checks existed have neither ``novelty`` nor ``min_detected_genes``
in their manifest: they load without a novelty check and with ``min_detected_genes = 1`` (only cells
with no counts are refused).

The bundle's digest (:attr:`ModelBundle.sha256`) is the sha256 of ``manifest.json``; as the manifest
records the weights' sha256, the digest covers both files. The registry stores it as a version tag
and :func:`load_bundle` checks it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model.classifier import CellTypeClassifier, ClassifierConfig
from model.errors import BundleError
from model.genes import VAR_NAMES, gene_key, gene_list_hash
from model.novelty import NoveltyDetector
from model.preprocessing import Preprocessing

BUNDLE_FORMAT = "celltype-bundle/1"
"""Format tag written into every manifest; loading refuses other formats."""
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.safetensors"
UNKNOWN_LABEL = "Unknown"
"""The label given to cells the model will not type (see :data:`model.novelty.UNKNOWN_REASONS` for why)."""
NOVELTY_ARRAY_PREFIX = "novelty/"
"""Keys of the novelty detector's arrays in the weights file (the classifier's keys never start so)."""


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ModelBundle:
    """A trained model with everything it needs to run.

    Attributes:
        config: the classifier's architecture.
        genes: the ordered genes of the model's input.
        classes: the cell types, in the order of the probability columns.
        preprocessing: how raw input becomes the model's input.
        state_dict: the classifier's tensors.
        temperature: softmax temperature fitted on validation data (1.0 = uncalibrated).
        unknown_threshold: cells whose top probability is below this are labelled ``"Unknown"``.
        novelty: the novelty detector (fitted on the training cells' features, threshold chosen
            on validation cells of the training labs); ``None``: no novelty check.
        min_detected_genes: cells detecting fewer of the model's genes are ``"Unknown"``
            (``too_few_genes``); at least 1.
        metadata: training facts (datasets, batches, held-out scores, run id, ...), JSON-ready.
        sha256: digest of the saved manifest; set by :func:`save_bundle` and :func:`load_bundle`.
        gene_identifiers: the same genes by other identifiers: ``{var column: one name per gene, in the
            order of genes}`` (e.g. ``gene_ids`` beside symbol ``var_names``); empty in bundles made
            before they were recorded.
    """

    config: ClassifierConfig
    genes: list[str]
    classes: list[str]
    preprocessing: Preprocessing
    state_dict: dict[str, torch.Tensor]
    temperature: float = 1.0
    unknown_threshold: float = 0.5
    novelty: NoveltyDetector | None = None
    min_detected_genes: int = 1
    metadata: dict[str, Any] = field(default_factory=dict)
    sha256: str | None = None
    gene_identifiers: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.genes) != self.config.n_genes:
            raise BundleError(f"{len(self.genes)} genes but the config expects {self.config.n_genes}")
        if len(self.classes) != self.config.n_classes:
            raise BundleError(f"{len(self.classes)} classes but the config expects {self.config.n_classes}")
        if len(set(self.genes)) != len(self.genes):
            raise BundleError("the model's gene list has duplicates")
        for name, names in self.gene_identifiers.items():
            if name == VAR_NAMES or len(names) != len(self.genes):
                raise BundleError(
                    f"gene identifier {name!r} must be a var column naming each of the {len(self.genes)} genes"
                )
            if len({gene_key(n) for n in names}) != len(names):
                raise BundleError(f"gene identifier {name!r} names two genes alike")
        if not self.temperature > 0:
            raise BundleError(f"temperature must be positive, got {self.temperature}")
        if not 0.0 <= self.unknown_threshold <= 1.0:
            raise BundleError(f"unknown_threshold must be in [0, 1], got {self.unknown_threshold}")
        if isinstance(self.min_detected_genes, bool) or not isinstance(self.min_detected_genes, int) or not (
            1 <= self.min_detected_genes <= self.config.n_genes
        ):
            raise BundleError(
                f"min_detected_genes must be a whole number in [1, {self.config.n_genes}], got {self.min_detected_genes!r}"
            )
        clashing = [key for key in self.state_dict if key.startswith(NOVELTY_ARRAY_PREFIX)]
        if clashing:
            raise BundleError(f"classifier tensors may not start with {NOVELTY_ARRAY_PREFIX!r}: {clashing[:3]}")

    @classmethod
    def from_model(cls, model: CellTypeClassifier, **kwargs: Any) -> ModelBundle:
        """Bundle a trained classifier (its tensors are copied to CPU)."""
        state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
        return cls(config=model.config, state_dict=state, **kwargs)

    @property
    def gene_list_hash(self) -> str:
        """sha256 of the ordered gene list."""
        return gene_list_hash(self.genes)

    def build_model(self, device: str | torch.device = "cpu") -> CellTypeClassifier:
        """The classifier with this bundle's weights, in eval mode, on ``device``."""
        model = CellTypeClassifier(self.config)
        try:
            model.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as exc:
            raise BundleError(f"the weights do not fit the bundle's config: {exc}") from None
        return model.to(device).eval()

    def novelty_state(self) -> tuple[dict[str, Any] | None, dict[str, torch.Tensor]]:
        """The novelty detector as manifest metadata and weights-file tensors (``None, {}`` without one)."""
        if self.novelty is None:
            return None, {}
        metadata, arrays = self.novelty.to_state()
        return metadata, {f"{NOVELTY_ARRAY_PREFIX}{name}": torch.from_numpy(a) for name, a in arrays.items()}

    def manifest(self, weights_sha256: str) -> dict[str, Any]:
        """The JSON manifest describing this bundle, given its weights file's sha256."""
        return {
            "format": BUNDLE_FORMAT,
            "config": self.config.to_dict(),
            "genes": list(self.genes),
            "gene_identifiers": {name: list(names) for name, names in self.gene_identifiers.items()},
            "gene_list_hash": self.gene_list_hash,
            "classes": list(self.classes),
            "preprocessing": self.preprocessing.to_dict(),
            "calibration": {"temperature": self.temperature, "unknown_threshold": self.unknown_threshold},
            "novelty": self.novelty_state()[0],
            "min_detected_genes": self.min_detected_genes,
            "metadata": self.metadata,
            "weights": {"file": WEIGHTS_FILE, "sha256": weights_sha256},
        }


def save_bundle(bundle: ModelBundle, directory: str | os.PathLike[str]) -> str:
    """Write ``bundle`` into ``directory`` (created or replaced atomically) and return its digest."""
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        save_file({**bundle.state_dict, **bundle.novelty_state()[1]}, str(staging / WEIGHTS_FILE))
        manifest = bundle.manifest(file_sha256(staging / WEIGHTS_FILE))
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    bundle.sha256 = file_sha256(target / MANIFEST_FILE)
    return bundle.sha256


def load_bundle(directory: str | os.PathLike[str], *, expected_sha256: str | None = None) -> ModelBundle:
    """Read a bundle written by :func:`save_bundle`, verifying every checksum. Nothing is unpickled.

    A manifest without ``novelty`` / ``min_detected_genes`` (a bundle from before the Unknown checks)
    loads with no novelty detector and ``min_detected_genes = 1``.

    Args:
        directory: the bundle directory.
        expected_sha256: the digest the bundle must have (e.g. from the registry's version tag).

    Raises:
        BundleError: a file is missing, the format is unknown, or a checksum does not match.
    """
    root = Path(directory)
    manifest_path, weights_path = root / MANIFEST_FILE, root / WEIGHTS_FILE
    if not root.is_dir():
        raise BundleError(f"no model bundle at {root}: not a directory")
    for path in (manifest_path, weights_path):
        if not path.is_file():
            raise BundleError(f"model bundle {root} is incomplete: {path.name} is missing")
    digest = file_sha256(manifest_path)
    if expected_sha256 is not None and digest != expected_sha256:
        raise BundleError(
            f"model bundle {root} fails its checksum: manifest sha256 {digest} != expected {expected_sha256}; "
            "the bundle was modified after registration"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"model bundle {root} has an unreadable manifest: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise BundleError(f"model bundle {root} has format {found!r}; this celltype reads {BUNDLE_FORMAT!r}")
    weights_digest = file_sha256(weights_path)
    if weights_digest != manifest["weights"]["sha256"]:
        raise BundleError(
            f"model bundle {root} fails its checksum: {WEIGHTS_FILE} sha256 {weights_digest} != "
            f"{manifest['weights']['sha256']} recorded in the manifest; the weights were modified"
        )
    try:
        tensors = load_file(str(weights_path))
        state_dict = {k: v for k, v in tensors.items() if not k.startswith(NOVELTY_ARRAY_PREFIX)}
        novelty_arrays = {
            k.removeprefix(NOVELTY_ARRAY_PREFIX): np.asarray(v.numpy())
            for k, v in tensors.items()
            if k.startswith(NOVELTY_ARRAY_PREFIX)
        }
        novelty_metadata = manifest.get("novelty")
        novelty = None if novelty_metadata is None else NoveltyDetector.from_state(novelty_metadata, novelty_arrays)
        calibration = manifest["calibration"]
        bundle = ModelBundle(
            config=ClassifierConfig.from_dict(manifest["config"]),
            genes=list(manifest["genes"]),
            classes=list(manifest["classes"]),
            preprocessing=Preprocessing.from_dict(manifest["preprocessing"]),
            state_dict=state_dict,
            temperature=float(calibration["temperature"]),
            unknown_threshold=float(calibration["unknown_threshold"]),
            novelty=novelty,
            min_detected_genes=manifest.get("min_detected_genes", 1),
            metadata=dict(manifest.get("metadata", {})),
            sha256=digest,
            gene_identifiers={str(k): list(v) for k, v in manifest.get("gene_identifiers", {}).items()},
        )
    except (KeyError, TypeError, ValueError, SafetensorError) as exc:
        raise BundleError(f"model bundle {root} is malformed: {exc!r}") from None
    return bundle
