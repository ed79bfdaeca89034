"""Speed of ``BatchRenorm1d`` against ``torch.nn.BatchNorm1d`` in the same run.

Two workloads, each timed for both layers with the iterations interleaved (one BatchNorm1d
iteration, one BatchRenorm1d iteration, the order alternating) so that load changes on the
machine hit both alike; reported are medians over many repeats after a warm-up:

- the layer alone, forward + backward (input, weight and bias gradients) in training mode at
  (N, C) = (32, 256), (256, 512), (1024, 1024), with the clipping active (r_max=3, d_max=5);
- a whole training step (AdamW, cross-entropy) of an MLP 2000-256-128-10 whose hidden blocks are
  Linear -> norm -> ReLU -> Dropout, batch 256.

    python -m benchmarks.bench_batchrenorm [--quick] [--device cpu|cuda] [--write]

``--write`` replaces the ``bench_batchrenorm`` section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from benchmarks.docs_section import replace_section
from model.batchrenorm import BatchRenorm1d

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
SECTION_START = "<!-- bench_batchrenorm:start -->"
SECTION_END = "<!-- bench_batchrenorm:end -->"
LAYER_SHAPES = ((32, 256, 2.0), (256, 512, 1.25), (1024, 1024, 1.25))
"""(N, C, target ratio) of the layer benchmark."""
TRAIN_STEP_TARGET = 1.05
MLP_SIZES = (2000, 256, 128, 10)
BATCH = 256
R_MAX, D_MAX = 3.0, 5.0


@dataclass(frozen=True)
class Result:
    """Median seconds per iteration of both variants of one workload."""

    workload: str
    batchnorm_s: float
    batchrenorm_s: float
    target: float

    @property
    def ratio(self) -> float:
        """BatchRenorm1d time over BatchNorm1d time."""
        return self.batchrenorm_s / self.batchnorm_s


def interleaved_medians(
    first: Callable[[], None], second: Callable[[], None], repeats: int, warmup: int, sync: Callable[[], None]
) -> tuple[float, float]:
    """Median seconds of ``first`` and ``second``, timed one iteration each in alternating order."""
    for _ in range(warmup):
        first()
        second()
    sync()
    times: tuple[list[float], list[float]] = ([], [])
    pair = ((0, first), (1, second))
    for i in range(repeats):
        for index, fn in pair if i % 2 == 0 else pair[::-1]:
            start = time.perf_counter()
            fn()
            sync()
            times[index].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def layer_step(layer: nn.Module, x: Tensor, upstream: Tensor) -> Callable[[], None]:
    """One training-mode forward + backward of ``layer`` with the gradients reset first."""

    def step() -> None:
        x.grad = None
        for parameter in layer.parameters():
            parameter.grad = None
        layer(x).backward(upstream)

    return step


def bench_layers(device: torch.device, scale: float, sync: Callable[[], None]) -> list[Result]:
    """Forward + backward of the layer alone at each of ``LAYER_SHAPES``."""
    results = []
    for n, c, target in LAYER_SHAPES:
        gen = torch.Generator().manual_seed(0)
        x = (torch.randn(n, c, generator=gen) * 2 + 1).to(device).requires_grad_()
        upstream = torch.randn(n, c, generator=gen).to(device)
        bn = nn.BatchNorm1d(c).to(device)
        brn = BatchRenorm1d(c, r_max=R_MAX, d_max=D_MAX).to(device)
        repeats = max(20, int(scale * 400_000 / (n * c) ** 0.5))
        bn_s, brn_s = interleaved_medians(
            layer_step(bn, x, upstream), layer_step(brn, x, upstream), repeats, max(10, repeats // 10), sync
        )
        results.append(Result(f"layer fwd+bwd ({n}, {c})", bn_s, brn_s, target))
    return results


def mlp(norm: Callable[[int], nn.Module]) -> nn.Sequential:
    """The MLP of ``MLP_SIZES``: hidden blocks Linear -> norm -> ReLU -> Dropout(0.1), then Linear."""
    layers: list[nn.Module] = []
    for width_in, width_out in zip(MLP_SIZES[:-2], MLP_SIZES[1:-1], strict=True):
        layers += [nn.Linear(width_in, width_out), norm(width_out), nn.ReLU(), nn.Dropout(0.1)]
    layers.append(nn.Linear(MLP_SIZES[-2], MLP_SIZES[-1]))
    return nn.Sequential(*layers)


def train_step(model: nn.Module, x: Tensor, y: Tensor) -> Callable[[], None]:
    """One AdamW step of ``model`` on the cross-entropy of ``(x, y)``."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()

    return step


def bench_train_step(device: torch.device, scale: float, sync: Callable[[], None]) -> Result:
    """A whole training step of the MLP built with each norm layer (same initial weights)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, MLP_SIZES[0], generator=gen).to(device)
    y = torch.randint(0, MLP_SIZES[-1], (BATCH,), generator=gen).to(device)
    torch.manual_seed(0)
    bn_model = mlp(nn.BatchNorm1d).to(device).train()
    torch.manual_seed(0)
    brn_model = mlp(lambda width: BatchRenorm1d(width, r_max=R_MAX, d_max=D_MAX)).to(device).train()
    repeats = max(20, int(scale * 600))
    bn_s, brn_s = interleaved_medians(
        train_step(bn_model, x, y), train_step(brn_model, x, y), repeats, max(10, repeats // 10), sync
    )
    return Result(
        f"MLP training step {'-'.join(map(str, MLP_SIZES))}, batch {BATCH}", bn_s, brn_s, TRAIN_STEP_TARGET
    )


def machine(device: torch.device) -> str:
    """CPU count and model, torch version and thread count (and the GPU, on CUDA)."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        models = [line for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        if models:
            cpu = models[0].split(":", 1)[1].strip()
    text = f"{os.cpu_count()} CPUs ({cpu}), torch {torch.__version__}, {torch.get_num_threads()} threads"
    if device.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return text


def render(results: list[Result], device: torch.device, quick: bool, load: tuple[str, str]) -> str:
    """The markdown report: context, table, targets."""
    unit = 1e6
    lines = [
        "## BatchRenorm1d vs BatchNorm1d",
        "",
        f"- Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; device: {device.type}"
        + (" (--quick)" if quick else ""),
        f"- Machine: {machine(device)}",
        f"- Load average (1 min) before / after: {load[0]} / {load[1]}",
        f"- BatchRenorm1d(r_max={R_MAX}, d_max={D_MAX}) (clipping active); medians of interleaved "
        "iterations after a warm-up; `python -m benchmarks.bench_batchrenorm`.",
        "",
        "| workload | BatchNorm1d (µs) | BatchRenorm1d (µs) | ratio | target | met |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.workload} | {r.batchnorm_s * unit:,.1f} | {r.batchrenorm_s * unit:,.1f} | "
            f"{r.ratio:.2f}x | ≤{r.target:.2f}x | {'yes' if r.ratio <= r.target else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run both workloads, print the markdown table; with ``--write`` update docs/benchmarks.md."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_batchrenorm", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a tenth of the repeats")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    scale = 0.1 if args.quick else 1.0
    load_before = f"{os.getloadavg()[0]:.1f}"
    results = [*bench_layers(device, scale, sync), bench_train_step(device, scale, sync)]
    text = render(results, device, args.quick, (load_before, f"{os.getloadavg()[0]:.1f}"))
    print(text)
    if args.write:
        replace_section(DOC, SECTION_START, SECTION_END, text)
        print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
