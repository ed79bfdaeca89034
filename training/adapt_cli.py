"""``celltype adapt``: re-estimate a model's normalization statistics on an unlabeled new lab (AdaBN).

    celltype adapt --model models:/pbmc@champion new_lab.h5ad --out adapted/ [--register pbmc]

Writes ``OUT/bundle/`` (a new bundle whose metadata records its lineage: parent digest and registry
version, target data set, cells), ``OUT/config.json``, ``OUT/metrics.json`` and ``OUT/history.json``
(so ``celltype register OUT`` also works), and with ``--register`` publishes it as a new registered
version tagged ``adapted_from`` (parent digest) and ``parent_version``. The adapted model is served
like any other: fixed statistics, each cell's answer independent of the request's other cells.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from model.adapt import ADAPTATION_WARNING, adaptation_warning, read_target_cells
from model.errors import InputError
from training.run import EXIT_OK, EXIT_REGISTRY_UNAVAILABLE

__all__ = ["ADAPTATION_WARNING", "add_commands", "adapt_to_directory", "read_target", "run_adapt"]

DEFAULT_MAX_CELLS = 100_000
"""Target cells used at most (a random subset of larger files); the statistics converge long before."""


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``adapt`` subcommand."""
    parser = subparsers.add_parser(
        "adapt",
        help="adapt a model to a new lab by re-estimating its normalization statistics (AdaBN)",
        description=__doc__.split("\n\n")[0] + " " + ADAPTATION_WARNING,
    )
    parser.add_argument("target", metavar="TARGET.h5ad", help="unlabeled cells of the new lab")
    parser.add_argument("--model", required=True, metavar="URI_OR_DIR", help="bundle directory or models:/NAME@ALIAS")
    parser.add_argument("--out", required=True, metavar="DIR", help="new, empty output directory")
    parser.add_argument("--input", dest="input_kind", choices=("auto", "counts", "lognorm"), default="auto",
                        help="kind of the target's values (default: detect)")
    parser.add_argument("--layer", metavar="NAME", help="use layers[NAME] instead of X")
    parser.add_argument("--inputs", dest="restandardize", action="store_true",
                        help="also re-estimate the per-gene input standardization on the target")
    parser.add_argument("--max-cells", type=int, default=DEFAULT_MAX_CELLS, metavar="N",
                        help=f"use at most N target cells, a random subset (default {DEFAULT_MAX_CELLS})")
    parser.add_argument("--register", metavar="NAME", help="register the adapted model under NAME")
    parser.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI (models:/ and --register)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --max-cells subset")
    parser.set_defaults(handler=run_adapt)


def read_target(path: Path, predictor: Any, input_kind: str, layer: str | None, max_cells: int, seed: int) -> np.ndarray:
    """The model input of (at most ``max_cells`` random) cells of ``path``, aligned to the model's genes.

    The file is read by the project's one ``.h5ad`` reader (:func:`model.adapt.read_target_cells`), so a
    structurally broken matrix is refused (:class:`model.sparse.SparseStructureError`) before any kernel.
    """
    from model.preprocessing import detect_input_kind

    if not path.is_file():
        raise InputError(f"target file not found: {path}")
    X, genes = read_target_cells(path, layer=layer, max_cells=max_cells, seed=seed)
    kind = detect_input_kind(X) if input_kind == "auto" else input_kind
    return predictor.transform(X, genes, input_kind=kind)


def adapt_to_directory(
    model: str, target: Path, out: Path, *, tracking_uri: str | None = None, input_kind: str = "auto",
    layer: str | None = None, restandardize: bool = False, max_cells: int = DEFAULT_MAX_CELLS, seed: int = 0,
) -> tuple[Path, dict[str, Any]]:
    """Adapt ``model`` to ``target`` and write ``out``; returns the bundle directory and the parent's source."""
    from model.adapt import ADAPTATION_KEY, adapt_bundle
    from model.bundle import save_bundle
    from model.predict import Predictor

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--out {out} already exists and is not an empty directory; choose a new one")
    predictor = Predictor.load(model, tracking_uri=tracking_uri, device="cpu")
    inputs = read_target(target, predictor, input_kind, layer, max_cells, seed)
    parent = {k: predictor.source.get(k) for k in ("uri", "name", "version", "alias", "run_id")}
    adapted = adapt_bundle(
        predictor.bundle, inputs, target=str(target), restandardize_inputs=restandardize, parent=parent
    )
    out.mkdir(parents=True, exist_ok=True)
    bundle_dir = out / "bundle"
    save_bundle(adapted, bundle_dir)
    lineage = adapted.metadata[ADAPTATION_KEY]
    (out / "config.json").write_text(json.dumps(adapted.metadata.get("training_config") or {}, indent=2) + "\n")
    (out / "history.json").write_text("[]\n")
    metrics = {"validation": None, "holdout": {"overall": None, "per_batch": {}}, "adaptation": lineage}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return bundle_dir, parent


def run_adapt(args: argparse.Namespace) -> int:
    """Handler of ``celltype adapt``; returns the exit code (``EXIT_REGISTRY_UNAVAILABLE``: adapted but not registered)."""
    import sys

    from model.bundle import load_bundle
    from model.registry.store import RegistryUnavailableError, registry_client
    from training.tracking import publish, resolve_tracking_uri

    print(adaptation_warning("adapt"), file=sys.stderr)
    tracking_uri = resolve_tracking_uri(args.tracking_uri) if (args.register or args.model.startswith("models:/")) else None
    out = Path(args.out)
    bundle_dir, parent = adapt_to_directory(
        args.model, Path(args.target), out, tracking_uri=tracking_uri, input_kind=args.input_kind,
        layer=args.layer, restandardize=args.restandardize, max_cells=args.max_cells, seed=args.seed,
    )
    bundle = load_bundle(bundle_dir)
    lineage = bundle.metadata["adaptation"]
    print(f"adapted {len(lineage['layers'])} normalization layer(s) on {lineage['n_cells']} cells of {args.target}"
          + (" (and the input standardization)" if lineage["restandardized_inputs"] else ""))
    print(f"bundle: {bundle_dir} (sha256 {bundle.sha256}, adapted from {lineage['parent_sha256']})")
    if not args.register:
        return EXIT_OK
    tags = {"adapted_from": str(lineage["parent_sha256"]), "adaptation_target": str(args.target)}
    if parent.get("version"):
        tags["parent_version"] = f"{parent.get('name')}/{parent['version']}"
    try:
        result = publish(out, tracking_uri=tracking_uri, register_name=args.register, tags=tags)
        if result.version:
            client = registry_client(tracking_uri)
            for key, value in tags.items():
                client.set_model_version_tag(args.register, result.version, key, value)
    except RegistryUnavailableError as exc:
        print(f"celltype adapt: {exc}", file=sys.stderr)
        return EXIT_REGISTRY_UNAVAILABLE
    print(f"registered {args.register} version {result.version} (alias challenger) at {tracking_uri}")
    return EXIT_OK
