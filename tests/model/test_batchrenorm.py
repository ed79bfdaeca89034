"""Tests of :mod:`model.batchrenorm` against an oracle written from the formulas in plain torch ops."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from model.batchrenorm import BatchRenorm1d, batch_renorm

EPS = 1e-5


def reduce_dims(x: Tensor) -> tuple[int, ...]:
    """The dimensions statistics are taken over: all but the channel dimension 1."""
    return (0, *range(2, x.dim()))


def per_channel(v: Tensor, x: Tensor) -> Tensor:
    """View a ``(C,)`` vector so that it broadcasts against ``x`` of shape ``(N, C, *)``."""
    return v.view(1, -1, *([1] * (x.dim() - 2)))


def oracle_train(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor,
    bias: Tensor,
    *,
    momentum: float,
    r_max: float,
    d_max: float,
    eps: float = EPS,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Batch renorm in training mode from the paper's formulas.

    Returns the output (differentiable w.r.t. ``x``, ``weight``, ``bias``), the updated running mean
    and variance, and the (unclipped-then-clipped) ``r`` and ``d``.
    """
    dims = reduce_dims(x)
    n = x.numel() // x.shape[1]
    mu_b = x.mean(dims)
    var_b = ((x - per_channel(mu_b, x)) ** 2).mean(dims)
    sigma_b = torch.sqrt(var_b + eps)
    sigma = torch.sqrt(running_var + eps)
    r = torch.clamp(sigma_b / sigma, 1.0 / r_max, r_max).detach()
    d = torch.clamp((mu_b - running_mean) / sigma, -d_max, d_max).detach()
    x_hat = (x - per_channel(mu_b, x)) / per_channel(sigma_b, x) * per_channel(r, x) + per_channel(d, x)
    y = per_channel(weight, x) * x_hat + per_channel(bias, x)
    new_mean = (1 - momentum) * running_mean + momentum * mu_b.detach()
    new_var = (1 - momentum) * running_var + momentum * var_b.detach() * n / (n - 1)
    return y, new_mean, new_var, r, d


def oracle_eval(x: Tensor, running_mean: Tensor, running_var: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Batch renorm in eval mode: ``weight * (x - mean) / sqrt(var + eps) + bias``."""
    z = (x - per_channel(running_mean, x)) / per_channel(torch.sqrt(running_var + EPS), x)
    return per_channel(weight, x) * z + per_channel(bias, x)


def make_layer(
    channels: int,
    *,
    r_max: float = 1.0,
    d_max: float = 0.0,
    momentum: float = 0.1,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> BatchRenorm1d:
    """A layer with random affine parameters and running statistics (so that nothing is trivial)."""
    gen = torch.Generator().manual_seed(seed)
    layer = BatchRenorm1d(channels, momentum=momentum, r_max=r_max, d_max=d_max, dtype=dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(channels, generator=gen) + 0.5)
        layer.bias.copy_(torch.randn(channels, generator=gen))
        layer.running_mean.copy_(torch.randn(channels, generator=gen))
        layer.running_var.copy_(torch.rand(channels, generator=gen) * 2 + 0.25)
    return layer


def make_input(shape: tuple[int, ...], *, seed: int = 1, dtype: torch.dtype = torch.float64) -> Tensor:
    """A random input with a non-zero mean and a non-unit scale per channel."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=dtype)
    scale = torch.rand(shape[1], generator=gen, dtype=dtype) * 3 + 0.2
    shift = torch.randn(shape[1], generator=gen, dtype=dtype)
    return x * per_channel(scale, x) + per_channel(shift, x)


def snapshot(layer: BatchRenorm1d) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Copies of ``(running_mean, running_var, weight, bias)``; weight and bias require grad."""
    return (
        layer.running_mean.clone(),
        layer.running_var.clone(),
        layer.weight.detach().clone().requires_grad_(),
        layer.bias.detach().clone().requires_grad_(),
    )


SHAPES = [(16, 5), (6, 5, 4)]
# (r_max, d_max): large enough never to clip, and tight enough to clip most channels here.
UNCLIPPED, CLIPPED = (1e6, 1e6), (1.05, 0.05)


@pytest.mark.parametrize("shape", SHAPES, ids=["2d", "3d"])
@pytest.mark.parametrize("limits", [UNCLIPPED, CLIPPED], ids=["unclipped", "clipped"])
def test_train_forward_and_running_stats_match_oracle(
    shape: tuple[int, ...], limits: tuple[float, float]
) -> None:
    r_max, d_max = limits
    layer = make_layer(shape[1], r_max=r_max, d_max=d_max)
    x = make_input(shape)
    mean0, var0, weight, bias = snapshot(layer)
    expected, new_mean, new_var, r, d = oracle_train(
        x, mean0, var0, weight, bias, momentum=0.1, r_max=r_max, d_max=d_max
    )
    if limits == CLIPPED:  # the test data really exercises the clipping
        assert torch.any((r == 1 / r_max) | (r == r_max))
        assert torch.any(d.abs() == d_max)

    out = layer(x)

    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(layer.running_mean, new_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.running_var, new_var, rtol=1e-12, atol=1e-12)
    assert layer.num_batches_tracked.item() == 1


@pytest.mark.parametrize("shape", SHAPES, ids=["2d", "3d"])
@pytest.mark.parametrize("limits", [UNCLIPPED, CLIPPED], ids=["unclipped", "clipped"])
def test_gradients_match_oracle(shape: tuple[int, ...], limits: tuple[float, float]) -> None:
    r_max, d_max = limits
    layer = make_layer(shape[1], r_max=r_max, d_max=d_max)
    mean0, var0, weight, bias = snapshot(layer)
    x = make_input(shape).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    upstream = make_input(shape, seed=7)

    layer(x).backward(upstream)
    expected = oracle_train(x_ref, mean0, var0, weight, bias, momentum=0.1, r_max=r_max, d_max=d_max)[0]
    expected.backward(upstream)

    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(layer.weight.grad, weight.grad, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(layer.bias.grad, bias.grad, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("shape", SHAPES, ids=["2d", "3d"])
def test_unclipped_train_output_equals_eval_output_with_pre_update_stats(shape: tuple[int, ...]) -> None:
    layer = make_layer(shape[1], r_max=1e6, d_max=1e6)
    x = make_input(shape)
    layer.eval()
    eval_out = layer(x)
    layer.train()
    train_out = layer(x)
    torch.testing.assert_close(train_out, eval_out, rtol=1e-10, atol=1e-10)


def test_eval_matches_formula_and_leaves_state_alone() -> None:
    layer = make_layer(5, r_max=3.0, d_max=5.0).eval()
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    x = make_input((9, 5))
    torch.testing.assert_close(layer(x), oracle_eval(x, *snapshot(layer)), rtol=1e-12, atol=1e-12)
    for key, value in layer.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("shape", [(32, 7), (12, 7, 3)], ids=["2d", "3d"])
def test_eval_rows_are_independent_of_the_batch(shape: tuple[int, ...]) -> None:
    layer = make_layer(7, r_max=3.0, d_max=5.0, dtype=torch.float32)
    for step in range(3):  # non-trivial running statistics
        layer(make_input(shape, seed=10 + step, dtype=torch.float32))
    layer.eval()
    x = make_input(shape, seed=99, dtype=torch.float32)
    perm = torch.randperm(shape[0], generator=torch.Generator().manual_seed(3))
    batched = layer(x[perm])
    for position, row in enumerate(perm.tolist()):
        alone = layer(x[row : row + 1])
        torch.testing.assert_close(batched[position : position + 1], alone, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(20, 6), (5, 6, 7)], ids=["2d", "3d"])
def test_plain_batch_norm_when_r_max_1_and_d_max_0(shape: tuple[int, ...]) -> None:
    brn = BatchRenorm1d(6, momentum=0.1)
    bn = nn.BatchNorm1d(6, momentum=0.1)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
    brn.load_state_dict(bn.state_dict())
    for step in range(3):
        x = make_input(shape, seed=step, dtype=torch.float32).requires_grad_()
        x_bn = x.detach().clone().requires_grad_()
        upstream = make_input(shape, seed=50 + step, dtype=torch.float32)
        out, out_bn = brn(x), bn(x_bn)
        out.backward(upstream)
        out_bn.backward(upstream)
        torch.testing.assert_close(out, out_bn, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x.grad, x_bn.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(brn.weight.grad, bn.weight.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(brn.bias.grad, bn.bias.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(brn.running_mean, bn.running_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(brn.running_var, bn.running_var, rtol=1e-6, atol=1e-6)
    assert brn.num_batches_tracked.item() == bn.num_batches_tracked.item() == 3
    brn.eval()
    bn.eval()
    x = make_input(shape, seed=77, dtype=torch.float32)
    torch.testing.assert_close(brn(x), bn(x), rtol=1e-6, atol=1e-6)


def test_state_dict_round_trips_with_batchnorm1d() -> None:
    bn = nn.BatchNorm1d(4)
    bn.train()
    for seed in range(2):
        bn(make_input((8, 4), seed=seed, dtype=torch.float32))
    brn = BatchRenorm1d(4)
    brn.load_state_dict(bn.state_dict(), strict=True)
    assert brn.state_dict().keys() == bn.state_dict().keys()
    for key, value in bn.state_dict().items():
        assert torch.equal(brn.state_dict()[key], value), key

    with torch.no_grad():
        brn.running_mean.add_(1.0)
        brn.weight.mul_(2.0)
    bn_again = nn.BatchNorm1d(4)
    bn_again.load_state_dict(brn.state_dict(), strict=True)
    for key, value in brn.state_dict().items():
        assert torch.equal(bn_again.state_dict()[key], value), key
    x = make_input((3, 4), seed=5, dtype=torch.float32)
    torch.testing.assert_close(brn.eval()(x), bn_again.eval()(x))


@pytest.mark.parametrize("shape", [(1, 4), (1, 4, 1)], ids=["2d", "3d"])
def test_batch_of_one_in_training_is_finite(shape: tuple[int, ...]) -> None:
    layer = make_layer(4, r_max=3.0, d_max=5.0)
    mean0, var0, weight, bias = snapshot(layer)
    x = make_input(shape).requires_grad_()

    out = layer(x)
    out.sum().backward()

    assert torch.isfinite(out).all()
    assert torch.isfinite(x.grad).all() and torch.isfinite(layer.weight.grad).all()
    # x - mean_B = 0, so the output is weight * d + bias with d from the pre-update statistics.
    d = torch.clamp((x.detach().reshape(-1) - mean0) / torch.sqrt(var0 + EPS), -5.0, 5.0)
    torch.testing.assert_close(out.detach().reshape(-1), weight.detach() * d + bias.detach())
    torch.testing.assert_close(layer.running_mean, 0.9 * mean0 + 0.1 * x.detach().reshape(-1))
    assert torch.equal(layer.running_var, var0)  # unbiased variance undefined: not updated
    assert layer.num_batches_tracked.item() == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_input_is_normalized_in_float32(dtype: torch.dtype) -> None:
    layer = make_layer(8, r_max=3.0, d_max=5.0, dtype=torch.float32)
    reference = make_layer(8, r_max=3.0, d_max=5.0, dtype=torch.float32)
    x = (make_input((64, 8), dtype=torch.float32) * 100).to(dtype).requires_grad_()
    x32 = x.detach().float().requires_grad_()

    out, expected = layer(x), reference(x32)
    out.float().sum().backward()
    expected.sum().backward()

    assert out.dtype == dtype and x.grad.dtype == dtype
    assert torch.isfinite(out).all()
    assert all(t.dtype == torch.float32 for t in (*layer.parameters(), layer.running_mean, layer.running_var))
    tol = 1e-2 if dtype == torch.float16 else 4e-2
    torch.testing.assert_close(out.float(), expected, rtol=tol, atol=tol)
    torch.testing.assert_close(layer.running_mean, reference.running_mean)
    torch.testing.assert_close(layer.running_var, reference.running_var)
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad)
    layer.eval()
    assert layer(x).dtype == dtype


def test_limits_are_read_at_every_forward() -> None:
    layer = make_layer(5)
    x = make_input((16, 5))
    for r_max, d_max in [(1.0, 0.0), (1.05, 0.05), (1e6, 1e6), (1.0, 0.0)]:
        layer.r_max, layer.d_max = r_max, d_max
        expected = oracle_train(x, *snapshot(layer), momentum=0.1, r_max=r_max, d_max=d_max)[0]
        torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)


def test_without_affine_parameters() -> None:
    layer = BatchRenorm1d(3, affine=False, r_max=2.0, d_max=0.5, dtype=torch.float64)
    assert layer.weight is None and layer.bias is None and not list(layer.parameters())
    x = make_input((10, 3)).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    ones, zeros = torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    expected = oracle_train(
        x_ref, zeros.clone(), ones.clone(), ones, zeros, momentum=0.01, r_max=2.0, d_max=0.5
    )[0]
    out = layer(x)
    torch.testing.assert_close(out, expected)
    out.backward(torch.ones_like(out))
    expected.backward(torch.ones_like(expected))
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_functional_form() -> None:
    x = make_input((12, 4))
    mean, var = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    out = batch_renorm(x, mean, var, training=True, momentum=0.5, r_max=2.0, d_max=1.0)
    ones, zeros = torch.ones(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    expected, new_mean, new_var, _, _ = oracle_train(
        x, zeros, ones, ones, zeros, momentum=0.5, r_max=2.0, d_max=1.0
    )
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(mean, new_mean)
    torch.testing.assert_close(var, new_var)
    torch.testing.assert_close(batch_renorm(x, mean, var), oracle_eval(x, mean, var, ones, zeros))


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(2, 12),
    channels=st.integers(1, 5),
    length=st.one_of(st.none(), st.integers(1, 4)),
    r_max=st.floats(1.0, 4.0),
    d_max=st.floats(0.0, 3.0),
    momentum=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_property_matches_oracle(
    n: int, channels: int, length: int | None, r_max: float, d_max: float, momentum: float, seed: int
) -> None:
    shape = (n, channels) if length is None else (n, channels, length)
    layer = make_layer(channels, r_max=r_max, d_max=d_max, momentum=momentum, seed=seed)
    x = make_input(shape, seed=seed + 1).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    mean0, var0, weight, bias = snapshot(layer)
    expected, new_mean, new_var, _, _ = oracle_train(
        x_ref, mean0, var0, weight, bias, momentum=momentum, r_max=r_max, d_max=d_max
    )
    out = layer(x)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(layer.running_mean, new_mean, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(layer.running_var, new_var, rtol=1e-10, atol=1e-10)
    out.square().sum().backward()
    expected.square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(layer.weight.grad, weight.grad, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"r_max": 0.5}, "r_max must be >= 1"),
        ({"r_max": math.nan}, "r_max must be >= 1"),
        ({"d_max": -0.1}, "d_max must be >= 0"),
        ({"eps": 0.0}, "eps must be > 0"),
        ({"momentum": 1.5}, r"momentum must be in \[0, 1\]"),
        ({"num_features": 0}, "num_features must be a positive integer"),
    ],
)
def test_invalid_arguments_raise(kwargs: dict[str, float], message: str) -> None:
    arguments = {"num_features": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        BatchRenorm1d(**arguments)


def test_invalid_limits_set_later_raise_at_the_next_training_forward() -> None:
    layer = BatchRenorm1d(3)
    layer.r_max = 0.9
    with pytest.raises(ValueError, match=r"r_max must be >= 1 \(got 0.9\)"):
        layer(torch.randn(4, 3))


def test_wrong_input_shapes_raise() -> None:
    layer = BatchRenorm1d(3)
    with pytest.raises(ValueError, match=r"expected 2D or 3D input \(got 4D input\)"):
        layer(torch.randn(2, 3, 4, 5))
    with pytest.raises(ValueError, match=r"expected 2D or 3D input \(got 1D input\)"):
        layer(torch.randn(3))
    with pytest.raises(ValueError, match=r"expected input with 3 channels at dim 1 \(got 4 channels\)"):
        layer(torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 3, \*\)"):
        batch_renorm(torch.randn(2, 4), torch.zeros(3), torch.ones(3))


def test_repr_and_sync_batchnorm_conversion() -> None:
    layer = BatchRenorm1d(7, r_max=3.0, d_max=5.0)
    assert repr(layer) == (
        "BatchRenorm1d(7, eps=1e-05, momentum=0.01, affine=True, r_max=3.0, d_max=5.0, sync_stats=False)"
    )
    model = nn.Sequential(nn.Linear(4, 7), layer)
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert converted[1] is layer  # not a _BatchNorm: left alone


def test_reset_parameters_restores_the_batchnorm_initial_state() -> None:
    layer = make_layer(4)
    layer(make_input((8, 4)))
    layer.reset_parameters()
    fresh = nn.BatchNorm1d(4, dtype=torch.float64).state_dict()
    for key, value in layer.state_dict().items():
        assert torch.equal(value, fresh[key]), key


def test_average_running_stats_without_distributed_is_a_no_op() -> None:
    layer = make_layer(3)
    before = layer.running_mean.clone(), layer.running_var.clone()
    layer.average_running_stats()
    assert torch.equal(layer.running_mean, before[0]) and torch.equal(layer.running_var, before[1])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inductor's
def test_torch_compile_matches_eager_without_recompiling_per_step() -> None:
    import torch._dynamo.testing

    torch._dynamo.reset()
    eager = make_layer(6, dtype=torch.float32)
    compiled_layer = make_layer(6, dtype=torch.float32)
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    compiled = torch.compile(compiled_layer, backend=counter)
    for step, (r_max, d_max) in enumerate([(1.0, 0.0), (1.5, 0.5), (2.0, 1.0), (3.0, 5.0)]):
        for layer in (eager, compiled_layer):
            layer.r_max, layer.d_max = r_max, d_max
        x = make_input((16, 6), seed=step, dtype=torch.float32).requires_grad_()
        x_compiled = x.detach().clone().requires_grad_()
        out, out_compiled = eager(x), compiled(x_compiled)
        out.square().sum().backward()
        out_compiled.square().sum().backward()
        torch.testing.assert_close(out_compiled, out, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x_compiled.grad, x.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(compiled_layer.running_mean, eager.running_mean)
        torch.testing.assert_close(compiled_layer.running_var, eager.running_var)
    torch.testing.assert_close(compiled_layer.weight.grad, eager.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(compiled_layer.bias.grad, eager.bias.grad, rtol=1e-4, atol=1e-4)
    # The limits are floats read at every step: one static graph, then one with them symbolic.
    assert counter.frame_count <= 2
    compiled_layer.eval()
    eager.eval()
    x = make_input((5, 6), seed=42, dtype=torch.float32)
    torch.testing.assert_close(compiled(x), eager(x), rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_matches_cpu(dtype: torch.dtype) -> None:
    cpu = make_layer(16, r_max=3.0, d_max=5.0, dtype=torch.float32)
    gpu = make_layer(16, r_max=3.0, d_max=5.0, dtype=torch.float32).cuda()
    x = make_input((64, 16), dtype=torch.float32).to(dtype).requires_grad_()
    x_gpu = x.detach().cuda().requires_grad_()
    out, out_gpu = cpu(x), gpu(x_gpu)
    assert out_gpu.dtype == dtype
    out.float().square().sum().backward()
    out_gpu.float().square().sum().backward()
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out_gpu.cpu(), out, rtol=tol, atol=tol)
    torch.testing.assert_close(x_gpu.grad.cpu(), x.grad, rtol=tol, atol=tol)
    torch.testing.assert_close(gpu.weight.grad.cpu(), cpu.weight.grad, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(gpu.running_var.cpu(), cpu.running_var, rtol=1e-4, atol=1e-5)
    gpu.eval()
    cpu.eval()
    torch.testing.assert_close(gpu(x_gpu.detach()).cpu(), cpu(x.detach()), rtol=tol, atol=tol)


# --- cross-rank mode: two gloo processes --------------------------------------------------------

WORLD = 2
SPLIT = (5, 9)  # uneven per-rank batches: the moments must be weighted by the counts
SYNC_SHAPE = (sum(SPLIT), 6, 3)


def _sync_worker(rank: int, store_port: int, out_dir: str) -> None:
    """One rank: a synced forward/backward on its slice of the batch, then average_running_stats."""
    store = dist.TCPStore("127.0.0.1", store_port, is_master=False)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD)
    try:
        layer = make_layer(SYNC_SHAPE[1], r_max=1.5, d_max=0.5)
        layer.sync_stats = True
        start = sum(SPLIT[:rank])
        rows = slice(start, start + SPLIT[rank])
        x = make_input(SYNC_SHAPE)[rows].clone().requires_grad_()
        upstream = make_input(SYNC_SHAPE, seed=3)[rows]
        out = layer(x)
        out.backward(upstream)
        synced = {
            "out": out.detach(),
            "x_grad": x.grad,
            "weight_grad": layer.weight.grad,
            "bias_grad": layer.bias.grad,
            "running_mean": layer.running_mean.clone(),
            "running_var": layer.running_var.clone(),
        }
        with torch.no_grad():
            layer.running_mean.fill_(float(rank))
            layer.running_var.fill_(1.0 + 2.0 * rank)
        layer.average_running_stats()
        synced["averaged_mean"] = layer.running_mean.clone()
        synced["averaged_var"] = layer.running_var.clone()
        torch.save(synced, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_sync_stats_across_two_gloo_ranks_equals_full_batch(tmp_path: Path) -> None:
    # The rendezvous store listens on a port the OS picks (no race for a "free" port); the ranks
    # connect to it on 127.0.0.1.
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    mp.spawn(_sync_worker, args=(store.port, str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD)]

    layer = make_layer(SYNC_SHAPE[1], r_max=1.5, d_max=0.5)
    x = make_input(SYNC_SHAPE).requires_grad_()
    out = layer(x)
    out.backward(make_input(SYNC_SHAPE, seed=3))

    torch.testing.assert_close(torch.cat([r["out"] for r in ranks]), out.detach(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(torch.cat([r["x_grad"] for r in ranks]), x.grad, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(sum(r["weight_grad"] for r in ranks), layer.weight.grad, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(sum(r["bias_grad"] for r in ranks), layer.bias.grad, rtol=1e-8, atol=1e-9)
    for r in ranks:
        torch.testing.assert_close(r["running_mean"], layer.running_mean, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(r["running_var"], layer.running_var, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(r["averaged_mean"], torch.full((6,), 0.5, dtype=torch.float64))
        torch.testing.assert_close(r["averaged_var"], torch.full((6,), 2.0, dtype=torch.float64))
