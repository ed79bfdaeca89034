"""Data-parallel training over several processes: ``celltype train --nproc N`` or your own ``torchrun``.

Every rank loads the data (in memory or left on disk as ``data_mode`` chooses, each rank then reading
its mini-batches from the files: :mod:`training.streaming`), makes the same split, gene selection and
initial weights (same seed; the weights are also broadcast from rank 0), and trains on its own shard
of the training cells (the samplers deal each epoch's cells or mini-batches to the ranks;
``batch_size`` is per rank). After each
backward pass the gradients are averaged over the ranks in one flat all-reduce (what
DistributedDataParallel does, without its module wrapper, so the model's state dict keeps its names);
backend gloo on CPU, NCCL on CUDA. Only rank 0 writes checkpoints, the output directory and the ONE
bundle, and publishes to MLflow.

Normalization across ranks (``--dist-norm``):

- ``local``: each rank normalizes with its own mini-batch (as with a per-rank batch of ``batch_size``);
  the running statistics of every BatchRenorm1d/BatchNorm1d layer (2·C floats per layer) are averaged
  over the ranks every ``--dist-stats-every`` steps and at the end of every epoch, so validation, model
  selection and the saved model see the same statistics on every rank.
- ``sync``: the batch moments are all-reduced at every step (``BatchRenorm1d.sync_stats``), so training
  is that of one process on the global mini-batch (``world_size · batch_size`` cells). ``batchnorm``
  layers are swapped for :class:`SyncBatchNorm1d` (a BatchRenorm1d pinned to ``r_max = 1, d_max = 0``,
  i.e. exactly batch norm) which works on gloo, unlike ``torch.nn.SyncBatchNorm``; its state dict is
  that of ``BatchNorm1d``, so the bundle is unchanged.

Before saving, every rank checks that all ranks hold identical weights and statistics (the largest
difference is recorded in ``metrics.json`` and the bundle metadata under ``distributed``) and fails
otherwise.

Launch: ``celltype train DATA.h5ad --nproc 2 [--dist-norm sync]`` runs
``python -m torch.distributed.run --standalone --nproc_per_node 2 -m training.distributed --spec FILE``;
on a cluster run ``torchrun --nnodes ... --nproc_per_node ... -m training.distributed DATA.h5ad --out DIR
[any celltype train option]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from model.batchrenorm import BatchRenorm1d
from model.errors import EXIT_INPUT, CellTypeError, InputError
from training.config import TrainConfig
from training.pipeline import train_model
from training.run import (
    EXIT_OK,
    TrainRequest,
    add_train_arguments,
    load,
    request_from_args,
    write_and_publish,
)
from training.streaming import streaming_setup
from training.strict_json import json_ready

DIST_NORM_MODES = ("local", "sync")
"""Values of ``--dist-norm``."""
DEFAULT_STATS_INTERVAL = 10
"""Steps between averages of the running statistics in ``local`` mode (and at every epoch end)."""
REPLICA_TOLERANCE = 1e-5
"""Largest difference between ranks' saved tensors that is accepted."""


class SyncBatchNorm1d(BatchRenorm1d):
    """Batch norm with batch moments over all ranks: a BatchRenorm1d whose limits stay ``r_max=1, d_max=0``.

    The Batch Renormalization schedule sets ``r_max``/``d_max`` on every BatchRenorm1d; this layer
    ignores that, so it stays exactly :class:`torch.nn.BatchNorm1d` (same buffers, update rule and
    state dict) while :attr:`sync_stats` all-reduces the moments (on gloo too).
    """

    @property  # type: ignore[override]
    def r_max(self) -> float:
        """Always 1 (plain batch norm)."""
        return 1.0

    @r_max.setter
    def r_max(self, value: float) -> None:
        pass

    @property  # type: ignore[override]
    def d_max(self) -> float:
        """Always 0 (plain batch norm)."""
        return 0.0

    @d_max.setter
    def d_max(self, value: float) -> None:
        pass


def norm_layers(model: nn.Module) -> list[nn.Module]:
    """Layers with running statistics (BatchRenorm1d and torch batch norms)."""
    return [
        m
        for m in model.modules()
        if isinstance(m, (BatchRenorm1d, nn.modules.batchnorm._BatchNorm)) and m.running_mean is not None
    ]


def use_synced_statistics(model: nn.Module) -> int:
    """Make every normalization layer compute its batch moments over all ranks; returns how many.

    BatchRenorm1d layers get ``sync_stats = True``; BatchNorm1d layers are replaced by
    :class:`SyncBatchNorm1d` sharing the same parameter objects (an optimizer built before keeps
    working) and copies of the buffers.
    """
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, BatchRenorm1d):
                child.sync_stats = True
                count += 1
            elif isinstance(child, nn.BatchNorm1d):
                layer = SyncBatchNorm1d(
                    child.num_features, eps=child.eps, momentum=child.momentum, affine=child.affine,
                    device=child.running_mean.device, sync_stats=True,
                )
                if child.affine:
                    layer.weight, layer.bias = child.weight, child.bias
                with torch.no_grad():
                    layer.running_mean.copy_(child.running_mean)
                    layer.running_var.copy_(child.running_var)
                    layer.num_batches_tracked.copy_(child.num_batches_tracked)
                layer.train(child.training)
                setattr(parent, name, layer)
                count += 1
    return count


@torch.no_grad()
def average_norm_statistics(model: nn.Module) -> None:
    """Average every normalization layer's running mean and variance over all ranks (one all-reduce)."""
    layers = norm_layers(model)
    if not layers or not dist.is_initialized():
        return
    flat = torch.cat([t for layer in layers for t in (layer.running_mean, layer.running_var)])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for layer in layers:
        for tensor in (layer.running_mean, layer.running_var):
            tensor.copy_(flat[offset : offset + tensor.numel()])
            offset += tensor.numel()


@torch.no_grad()
def broadcast_state(model: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    for tensor in [*model.parameters(), *model.buffers()]:
        dist.broadcast(tensor.data, src=0)


@torch.no_grad()
def average_gradients(model: nn.Module) -> None:
    """Average the gradients over all ranks in one flat all-reduce (missing gradients count as 0)."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        if p.grad is None:
            p.grad = flat[offset : offset + n].view_as(p).clone()
        else:
            p.grad.copy_(flat[offset : offset + n].view_as(p))
        offset += n


@torch.no_grad()
def replica_difference(state: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between this rank's tensors and rank 0's (the same on every rank)."""
    flat = torch.cat([t.detach().double().reshape(-1).cpu() for _, t in sorted(state.items())])
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    flat = flat.to(device)
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    difference = (flat - reference).abs().max().reshape(1)
    dist.all_reduce(difference, op=dist.ReduceOp.MAX)
    return float(difference.item())


@dataclass
class DataParallel:
    """The ``configure_trainer`` callback of :func:`training.pipeline.train_model` for one rank.

    Broadcasts rank 0's initial state, switches the normalization layers to ``sync`` mode if asked,
    and installs the gradient hook that averages gradients (and, in ``local`` mode, the running
    statistics every ``stats_interval`` steps and at the end of each epoch).
    """

    norm_mode: str = "local"
    stats_interval: int = DEFAULT_STATS_INTERVAL

    def __post_init__(self) -> None:
        if self.norm_mode not in DIST_NORM_MODES:
            raise InputError(f"--dist-norm must be one of {', '.join(DIST_NORM_MODES)} (got {self.norm_mode!r})")
        if self.stats_interval < 1:
            raise InputError(f"--dist-stats-every must be >= 1 (got {self.stats_interval})")

    def __call__(self, trainer: Any) -> None:
        """Prepare ``trainer`` (a :class:`training.trainer.Trainer`) for data-parallel steps."""
        broadcast_state(trainer.model)
        if self.norm_mode == "sync":
            use_synced_statistics(trainer.model)
        previous: Callable[[nn.Module], None] | None = trainer.gradient_hook

        def hook(model: nn.Module) -> None:
            average_gradients(model)
            step = trainer.step + 1
            epoch_end = step % trainer.steps_per_epoch == 0 or step >= trainer.total_steps
            if epoch_end or (self.norm_mode == "local" and step % self.stats_interval == 0):
                average_norm_statistics(model)
            if previous is not None:
                previous(model)

        trainer.gradient_hook = hook


def rank_setup(data: Any, config: TrainConfig, parallel: DataParallel) -> Callable[[Any], None]:
    """The ``configure_trainer`` of one rank: the data-mode setup of one process
    (:func:`training.streaming.streaming_setup`: block sampler and background reading when the data is
    read from disk, ``data_mode``), then :class:`DataParallel`. The streamed sampler keeps the rank's
    shard (``rank``/``world_size``): each rank makes only its own mini-batches' inputs (reading the
    windows they come from)."""
    streaming = streaming_setup(data, config.sampler_block_rows)

    def configure(trainer: Any) -> None:
        if streaming is not None:
            streaming(trainer)
        parallel(trainer)

    return configure


# -- launching ------------------------------------------------------------------------------------


def spec_from_args(args: argparse.Namespace, *, check_out: bool = True) -> dict[str, Any]:
    """The JSON-ready description of a ``celltype train`` run that every rank executes.

    ``check_out``: check that ``--out`` is new (only the launching process or rank 0 should: others
    would race with rank 0 creating it).
    """
    if getattr(args, "resume", False):
        raise InputError("--resume is not supported with several processes; rerun with --nproc 1 to resume")
    request = request_from_args(args, check_out=check_out)
    return {
        "config": request.config.to_dict(),
        "data": request.data,
        "out": str(request.out),
        "tracking_uri": request.tracking_uri,
        "register": request.register,
        "progress": request.progress,
        "norm_mode": getattr(args, "dist_norm", "local") or "local",
        "stats_interval": getattr(args, "dist_stats_every", None) or DEFAULT_STATS_INTERVAL,
        "publish": True,
    }


def torchrun_command(spec_path: Path, nproc: int) -> list[str]:
    """The command starting ``nproc`` ranks of :func:`run_distributed` on this machine."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
        "-m", "training.distributed", "--spec", str(spec_path),
    ]


def launch(args: argparse.Namespace) -> int:
    """``celltype train --nproc N``: start N ranks with torchrun on this machine; returns their exit code."""
    nproc = int(args.nproc)
    if nproc < 1:
        raise InputError(f"--nproc must be >= 1 (got {nproc})")
    spec = spec_from_args(args)
    DataParallel(spec["norm_mode"], spec["stats_interval"])  # validates before starting processes
    with tempfile.TemporaryDirectory(prefix="celltype_dist_") as tmp:
        spec_path = Path(tmp) / "spec.json"
        status = Path(tmp) / "status"
        spec_path.write_text(json.dumps({**spec, "status_file": str(status)}))
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")
        print(f"launching {nproc} training processes ({spec['norm_mode']} normalization); output {spec['out']}",
              flush=True)
        code = subprocess.run(torchrun_command(spec_path, nproc), env=env).returncode
        # rank 0 reports its own exit code (EXIT_REGISTRY_UNAVAILABLE: trained, not published) here: torchrun maps it to 1
        return int(status.read_text()) if code == 0 and status.is_file() else code


def _init_process_group(device: str) -> str:
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return backend


def run_distributed(spec: dict[str, Any]) -> int:
    """One rank of a data-parallel run (environment from torchrun); rank 0 writes and publishes.

    The steps and exit codes are those of one process (:mod:`training.run`); rank 0 reports its code
    through ``spec["status_file"]`` when the launcher gave one (torchrun maps every failure to 1).
    """
    config = TrainConfig.from_dict(spec["config"])
    cuda = config.device.startswith("cuda") or (config.device == "auto" and torch.cuda.is_available())
    if cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        config = config.updated({"device": f"cuda:{local_rank}"})
    else:
        config = config.updated({"device": "cpu"})
    request = TrainRequest(
        config=config, data=list(spec["data"]), out=Path(spec["out"]), tracking_uri=spec["tracking_uri"],
        register=spec["register"], progress=bool(spec["progress"]),
    )
    backend = _init_process_group(config.device)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    parallel = DataParallel(spec["norm_mode"], int(spec["stats_interval"]))
    try:
        if rank == 0:
            print(f"output directory: {request.out}; {world_size} ranks ({backend}), {parallel.norm_mode} normalization")
        data, report = load(request, echo=rank == 0)
        run = train_model(
            config, data, datasets=request.data, out_dir=request.out if rank == 0 else None,
            progress=request.progress and rank == 0, rank=rank, world_size=world_size,
            configure_trainer=rank_setup(data, config, parallel),
        )
        difference = replica_difference(run.bundle.state_dict)
        if difference > REPLICA_TOLERANCE:
            raise RuntimeError(f"ranks disagree on the trained model (max difference {difference:g})")
        facts = {
            "world_size": world_size,
            "backend": backend,
            "norm_mode": parallel.norm_mode,
            "stats_interval": parallel.stats_interval,
            "batch_size_per_rank": config.batch_size,
            "global_batch_size": config.batch_size * world_size,
            "max_replica_difference": difference,
        }
        run.metrics["distributed"] = facts
        run.bundle.metadata["distributed"] = json_ready(facts)
        code = EXIT_OK
        if rank == 0:
            print(f"ranks identical (max difference {difference:g})")
            code = write_and_publish(run, request, report, publish_run=spec.get("publish", True))
            if spec.get("status_file"):
                Path(spec["status_file"]).write_text(str(code))
                code = EXIT_OK
        dist.barrier()
        return code
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    """Entry point of each rank: ``--spec FILE`` (from ``celltype train --nproc``) or ``celltype train`` options."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["--spec"] and len(argv) == 2:
            spec = json.loads(Path(argv[1]).read_text())
        else:
            parser = argparse.ArgumentParser(prog="torchrun ... -m training.distributed")
            add_train_arguments(parser)
            args = parser.parse_args(argv)
            if args.out is None:
                raise InputError("give --out DIR: every rank must agree on the output directory")
            spec = spec_from_args(args, check_out=os.environ.get("RANK", "0") == "0")
        return run_distributed(spec)
    except CellTypeError as exc:
        print(f"celltype train (rank {os.environ.get('RANK', '0')}): error: {exc}", file=sys.stderr)
        return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())
