"""Opt-in adaptation of a trained model to a new lab (AdaBN): re-estimate its normalization statistics.

A model trained on some labs normalizes its hidden units with running statistics of those labs. A new
lab shifts and scales every gene, so the statistics no longer centre its cells. AdaBN (Li et al. 2016)
re-estimates the running mean and variance of every batch-normalization layer on unlabeled cells of
the new lab, with every weight frozen and dropout off; optionally the per-gene input standardization
is re-estimated too. The result is a NEW bundle, served like any other: fixed statistics in eval mode,
so each cell's answer still does not depend on the other cells of a request.

The statistics are exact moments over all the target cells (a cumulative average, not a moving one),
computed one normalization layer at a time, in the order the layers are applied, so each layer sees
the input produced by the already adapted layers before it.

Torch and numpy only at import time: the service may use this module. :func:`read_target_cells` (the
one way the adapt paths read target cells) imports the ``.h5ad`` reader when called.

Adaptation is opt-in because it made models worse on real held-out labs; every command that adapts
prints :data:`ADAPTATION_WARNING` (the measured figures) to stderr.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch
from torch import nn

from model.batchrenorm import BatchRenorm1d
from model.bundle import ModelBundle
from model.classifier import CellTypeClassifier
from model.errors import InputError

__all__ = [
    "ADAPTATION_KEY",
    "ADAPTATION_WARNING",
    "AdaptationResult",
    "adapt_bundle",
    "adapt_model",
    "adaptation_warning",
    "normalization_layers",
    "read_target_cells",
]

ADAPTATION_KEY = "adaptation"
"""Bundle metadata key holding the lineage of an adapted model."""
DEFAULT_CHUNK = 4096
"""Cells per forward pass while collecting statistics."""
MIN_TARGET_CELLS = 2
"""Fewest target cells that give a variance."""
READ_BLOCK_CELLS = 10_000
"""Rows read (and structurally checked) at a time by :func:`read_target_cells`."""

ADAPTATION_WARNING = (
    "warning: adaptation is opt-in because it made models worse on real held-out labs: AdaBN changed held-out "
    "macro-F1 by -1.4 pp on average over five real data sets (cellbench -0.4, muscat_kang -3.7, scannotate_pbmc "
    "-0.2, scclassify_pancreas -3.9, symphony_pbmc +1.2 pp; batchrenorm, lab-homogeneous mini-batches; "
    "docs/benchmarks.md, Evidence section). Compare the adapted model with the original on labeled cells of "
    "the new lab before you use it."
)
"""The measured effect of AdaBN (docs/benchmarks.md, "AdaBN - none, batchrenorm, lab-homogeneous"): printed to
stderr by every ``celltype adapt`` and ``celltype score --adapt`` run (:func:`adaptation_warning`)."""


def adaptation_warning(command: str) -> str:
    """:data:`ADAPTATION_WARNING` as ``celltype COMMAND`` prints it (one line, for stderr)."""
    return f"celltype {command}: {ADAPTATION_WARNING}"


def read_target_cells(
    path: Any,
    *,
    layer: str | None = None,
    gene_column: str | None = None,
    max_cells: int | None = None,
    seed: int = 0,
    allow_csc: bool = True,
    layer_hint: str = "(leave out --layer to use X)",
) -> tuple[Any, list[str]]:
    """The cells of an ``.h5ad`` file to adapt on (at most ``max_cells``, a random subset), and its genes.

    Read with the project's one ``.h5ad`` reader (:class:`model.h5ad.H5adRows`), block by block, so every
    CSR block passes :func:`model.sparse.check_csr_structure` before any kernel touches it: a corrupt file
    (a gene index past the last gene, row pointers going backwards, fewer values than the row pointers
    claim) raises :class:`model.sparse.SparseStructureError`, an :class:`InputError`, never a crash.

    Args:
        path: the file.
        layer: read ``layers[layer]`` instead of ``X``.
        gene_column: take gene names from this ``var`` column instead of ``var_names``.
        max_cells: use at most this many cells, a random subset (seeded by ``seed``) in file order.
        seed: seed of the subset.
        allow_csc: accept a column-major (CSC) matrix (read, and checked, whole).
        layer_hint: appended to the message for a missing layer.

    Returns:
        ``(matrix, genes)``: float32 CSR rows (dense rows for a dense file), the file's gene names.

    Raises:
        InputError: the file is missing, not an ``.h5ad``, structurally broken, has no such layer or gene
            column, or ``max_cells`` is below two.
    """
    import scipy.sparse as sp

    from model.genes import var_column_genes
    from model.h5ad import H5adRows

    if max_cells is not None and max_cells < MIN_TARGET_CELLS:
        raise InputError(f"adaptation needs at least {MIN_TARGET_CELLS} target cells; got a limit of {max_cells}")
    with H5adRows(path, layer, allow_csc=allow_csc, layer_hint=layer_hint) as reader:
        genes = reader.genes if gene_column is None else var_column_genes(reader.var_frame(), gene_column)
        n_cells = reader.n_cells
        chosen = None
        if max_cells is not None and n_cells > max_cells:
            chosen = np.sort(np.random.default_rng(seed).choice(n_cells, max_cells, replace=False))
        step = n_cells if reader.encoding == "csc" else READ_BLOCK_CELLS
        parts = []
        for start in range(0, n_cells, max(step, 1)):
            stop = min(start + step, n_cells)
            block = reader.read(start, stop)
            rows = block.csr() if block.is_sparse else np.asarray(block.values, dtype=np.float32)
            if chosen is not None:
                rows = rows[chosen[(chosen >= start) & (chosen < stop)] - start]
            parts.append(rows)
        if not parts:
            empty = sp.csr_matrix((0, reader.n_genes), dtype=np.float32)
            return empty, genes
        if reader.is_sparse:
            return sp.vstack(parts, format="csr", dtype=np.float32), genes
        return np.concatenate(parts), genes


def normalization_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers with running statistics (BatchRenorm1d, BatchNorm1d), in module order, with their names."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, (BatchRenorm1d, nn.modules.batchnorm._BatchNorm))
        and getattr(module, "running_mean", None) is not None
    ]


@dataclass(frozen=True)
class AdaptationResult:
    """What :func:`adapt_model` changed.

    Attributes:
        n_cells: target cells the statistics were estimated on.
        layers: names of the normalization layers whose running statistics were replaced.
        restandardized_inputs: whether the per-gene input standardization was re-estimated.
        mean_shift: per layer, the mean absolute change of the running mean in units of the old
            running standard deviation (how far the target lab sat from the training labs).
    """

    n_cells: int
    layers: tuple[str, ...]
    restandardized_inputs: bool
    mean_shift: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "n_cells": self.n_cells,
            "layers": list(self.layers),
            "restandardized_inputs": self.restandardized_inputs,
            "mean_shift": dict(self.mean_shift),
        }


def _chunks(inputs: np.ndarray, chunk: int) -> Iterator[torch.Tensor]:
    for start in range(0, inputs.shape[0], chunk):
        yield torch.from_numpy(np.ascontiguousarray(inputs[start : start + chunk], dtype=np.float32))


class _Moments:
    """Exact per-channel mean and variance accumulated in float64 over chunks."""

    def __init__(self) -> None:
        self.count = 0
        self.total: torch.Tensor | None = None
        self.total_sq: torch.Tensor | None = None

    def add(self, values: torch.Tensor) -> None:
        values = values.detach().double().reshape(values.shape[0], values.shape[1], -1)
        values = values.transpose(1, 2).reshape(-1, values.shape[1])
        total, total_sq = values.sum(0), values.square().sum(0)
        self.total = total if self.total is None else self.total + total
        self.total_sq = total_sq if self.total_sq is None else self.total_sq + total_sq
        self.count += values.shape[0]

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and unbiased variance (the convention of BatchNorm's ``running_var``)."""
        assert self.total is not None and self.total_sq is not None
        mean = self.total / self.count
        var = (self.total_sq / self.count - mean.square()).clamp_min(0.0) * (self.count / (self.count - 1))
        return mean, var


@torch.no_grad()
def adapt_model(
    model: CellTypeClassifier,
    inputs: np.ndarray,
    *,
    restandardize_inputs: bool = False,
    chunk: int = DEFAULT_CHUNK,
) -> AdaptationResult:
    """Re-estimate ``model``'s normalization statistics, in place, on the model inputs of target cells.

    Only ``running_mean``/``running_var`` of each BatchRenorm1d/BatchNorm1d layer (and, with
    ``restandardize_inputs``, the ``input_mean``/``input_scale`` buffers) change; weights, biases and
    ``num_batches_tracked`` do not. The model runs in eval mode throughout (dropout off) and is left
    in eval mode.

    Args:
        model: the classifier (any device; statistics are computed there).
        inputs: ``(n_cells, n_genes)`` model input of the target cells (log-normalized, aligned to the
            model's genes, e.g. from :meth:`model.predict.Predictor.transform`).
        restandardize_inputs: also replace the per-gene input mean and scale by the target's.
        chunk: cells per forward pass.

    Raises:
        InputError: fewer than two target cells, inputs of the wrong width or not finite, or a model
            without normalization layers and no input re-standardization asked for.
    """
    inputs = np.asarray(inputs)
    n_genes = model.config.n_genes
    if inputs.ndim != 2 or inputs.shape[1] != n_genes:
        raise InputError(f"adaptation needs the model input of shape (n_cells, {n_genes}), got {inputs.shape}")
    if inputs.shape[0] < MIN_TARGET_CELLS:
        raise InputError(f"adaptation needs at least {MIN_TARGET_CELLS} target cells, got {inputs.shape[0]}")
    if not np.isfinite(inputs).all():
        raise InputError("the target cells' model input has NaN or infinite values")
    layers = normalization_layers(model)
    if not layers and not restandardize_inputs:
        raise InputError(
            f"this model (norm={model.config.norm!r}) has no batch-normalization layers, so there are no "
            "statistics to adapt; re-estimate the input standardization instead (restandardize inputs)"
        )
    model.eval()
    device = next(model.parameters()).device
    if restandardize_inputs:
        moments = _Moments()
        for part in _chunks(inputs, chunk):
            moments.add(part.to(device))
        mean, var = moments.mean_var()
        population_var = var * ((moments.count - 1) / moments.count)  # as training's input statistics
        model.set_input_scaling(mean.float(), population_var.sqrt().float())

    shifts: dict[str, float] = {}
    for name, layer in layers:
        moments = _Moments()
        handle = layer.register_forward_pre_hook(lambda _m, args, acc=moments: acc.add(args[0]))
        try:
            for part in _chunks(inputs, chunk):
                model(part.to(device))
        finally:
            handle.remove()
        mean, var = moments.mean_var()
        old_std = (layer.running_var.double() + layer.eps).sqrt()
        shifts[name] = float(((mean - layer.running_mean.double()).abs() / old_std).mean())
        layer.running_mean.copy_(mean.to(layer.running_mean.dtype))
        layer.running_var.copy_(var.to(layer.running_var.dtype))
    return AdaptationResult(
        n_cells=int(inputs.shape[0]),
        layers=tuple(name for name, _ in layers),
        restandardized_inputs=restandardize_inputs,
        mean_shift=shifts,
    )


def adapt_bundle(
    bundle: ModelBundle,
    inputs: np.ndarray,
    *,
    target: str,
    restandardize_inputs: bool = False,
    parent: dict[str, Any] | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> ModelBundle:
    """A NEW bundle: ``bundle`` with normalization statistics re-estimated on ``inputs`` (see :func:`adapt_model`).

    The input bundle is not modified. The new bundle's metadata is the parent's plus
    ``metadata["adaptation"]``: ``parent_sha256`` (the parent bundle's digest), ``parent`` (where it came
    from, e.g. registry name/version), ``target_dataset``, ``n_cells``, the adapted layers, whether the
    inputs were re-standardized, the mean shift per layer and ``adapted_at``; its ``adapted_from`` key is
    the parent digest. Save it with :func:`model.bundle.save_bundle` to get its own digest.

    Args:
        bundle: the trained model.
        inputs: model input of the (unlabeled) target cells.
        target: a name for the target data set (e.g. its path), recorded in the lineage.
        restandardize_inputs: also re-estimate the per-gene input standardization.
        parent: facts about the parent's source (registry URI, name, version, run id), recorded.
        chunk: cells per forward pass.
    """
    model = bundle.build_model("cpu")
    result = adapt_model(model, inputs, restandardize_inputs=restandardize_inputs, chunk=chunk)
    metadata = copy.deepcopy(bundle.metadata)
    lineage = {
        "parent_sha256": bundle.sha256,
        "parent": {k: v for k, v in (parent or {}).items() if v is not None},
        "target_dataset": str(target),
        **result.to_dict(),
        "adapted_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    metadata[ADAPTATION_KEY] = lineage
    metadata["adapted_from"] = bundle.sha256
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    return replace(bundle, state_dict=state, metadata=metadata, sha256=None)
