r"""Batch Renormalization (Ioffe, 2017) as a drop-in replacement for :class:`torch.nn.BatchNorm1d`.

Batch Renormalization corrects the mini-batch statistics towards the running statistics with two
per-channel factors ``r`` and ``d`` that are treated as constants by autograd, so that training and
inference compute the same function of the input whenever the correction is not clipped. See
:class:`BatchRenorm1d` for the formulas and :func:`batch_renorm` for the functional form.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F

if TYPE_CHECKING:  # torch.distributed may be unavailable at run time (dist.is_available())
    from torch.distributed import ProcessGroup

__all__ = ["BatchRenorm1d", "batch_renorm"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _check_hyperparameters(momentum: float, eps: float, r_max: float, d_max: float) -> None:
    """Raise ``ValueError`` for a momentum outside [0, 1], ``eps <= 0``, ``r_max < 1`` or ``d_max < 0``."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1] (got {momentum})")
    if not eps > 0.0:
        raise ValueError(f"eps must be > 0 (got {eps})")
    if not r_max >= 1.0:
        raise ValueError(f"r_max must be >= 1 (got {r_max})")
    if not d_max >= 0.0:
        raise ValueError(f"d_max must be >= 0 (got {d_max})")


def _fold_affine(weight: Tensor | None, bias: Tensor | None, r: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    """Return ``(weight * r, weight * d + bias)``; a missing weight counts as 1, a missing bias as 0."""
    if weight is None:
        return r, d if bias is None else d + bias
    return weight * r, weight * d if bias is None else torch.addcmul(bias, weight, d)


def _synced_moments(input: Tensor, group: ProcessGroup) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, biased variance and element count per channel over all ranks of ``group``.

    Each rank contributes ``[sum, sum of squares, count]`` to ONE differentiable all-reduce in
    float64; the sum of squares is assembled from the rank's centred second moment so that the
    cancellation in ``E[x^2] - E[x]^2`` happens in float64 only.
    """
    # Imported lazily, as only this mode needs it. The first all-reduce in a process loads
    # torch._dynamo (a one-off of a few seconds); its result is waited on at its first use below.
    from torch.distributed import _functional_collectives as funcol

    dims = (0, *range(2, input.dim()))
    count = input.numel() // input.shape[1]
    local_mean = input.mean(dims, keepdim=True)
    local_m2 = (input - local_mean).square().sum(dims).double()
    local_sum = local_mean.reshape(-1).double() * count
    payload = torch.cat(
        (local_sum, local_m2 + local_sum * (local_sum / count), local_sum.new_full((1,), count))
    )
    # ``funcol.all_reduce`` is autograd-aware (its backward all-reduces the gradient) and traceable
    # by torch.compile; ``torch.distributed.nn.functional.all_reduce`` is deprecated in its favour.
    total = funcol.all_reduce(payload, "sum", group)
    channels = input.shape[1]
    total_count = total[-1].detach()
    mean = total[:channels] / total_count
    var = total[channels : 2 * channels] / total_count - mean.square()
    return mean.to(input.dtype), var.clamp_min(0.0).to(input.dtype), total_count


def batch_renorm(
    input: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.01,
    eps: float = 1e-5,
    r_max: float = 1.0,
    d_max: float = 0.0,
    *,
    sync_stats: bool = False,
    process_group: ProcessGroup | None = None,
) -> Tensor:
    r"""Apply Batch Renormalization to ``input`` of shape :math:`(N, C, *)`.

    In training mode the output is
    :math:`\gamma\,(\frac{x - \mu_B}{\sigma_B} r + d) + \beta` with the batch mean :math:`\mu_B`, the
    biased :math:`\sigma_B = \sqrt{\mathrm{Var}_B[x] + \epsilon}`,
    :math:`r = \mathrm{clip}(\sigma_B / \sigma, 1/r_{max}, r_{max})` and
    :math:`d = \mathrm{clip}((\mu_B - \mu) / \sigma, -d_{max}, d_{max})`, where
    :math:`\mu` and :math:`\sigma = \sqrt{\text{running\_var} + \epsilon}` are the running statistics
    before this call; ``r`` and ``d`` carry no gradient. The running statistics are then updated in
    place exactly like :func:`torch.nn.functional.batch_norm` does (``momentum`` weights the batch,
    ``running_var`` receives the unbiased batch variance). In eval mode the output is
    :math:`\gamma\,\frac{x - \mu}{\sigma} + \beta`, one :func:`~torch.nn.functional.batch_norm` call.

    float16/bfloat16 inputs are normalized in float32 and returned in their own dtype.

    With a single value per channel in training (:math:`N \cdot L = 1`) the batch variance is 0 and the
    unbiased variance undefined: the output is :math:`\gamma d + \beta` (finite, zero gradient with
    respect to the input), ``running_mean`` is updated and ``running_var`` is left unchanged.

    Args:
        input: tensor of shape :math:`(N, C, *)`.
        running_mean: running mean of shape :math:`(C)`, updated in place when ``training``.
        running_var: running variance of shape :math:`(C)`, updated in place when ``training``.
        weight: :math:`\gamma` of shape :math:`(C)`, or ``None`` for 1. Default: ``None``
        bias: :math:`\beta` of shape :math:`(C)`, or ``None`` for 0. Default: ``None``
        training: use (and renormalize) the batch statistics and update the running ones.
            Default: ``False``
        momentum: weight of the batch in the running-statistics update. Default: 0.01
        eps: value added to the variances for numerical stability. Default: 1e-5
        r_max: clip bound of ``r`` (:math:`\geq 1`). Default: 1 (plain batch norm)
        d_max: clip bound of ``d`` (:math:`\geq 0`). Default: 0 (plain batch norm)
        sync_stats: in training, compute the batch statistics over all ranks of ``process_group``
            when :mod:`torch.distributed` is initialized. Default: ``False``
        process_group: group for ``sync_stats``; ``None`` means the default (world) group.

    Returns:
        Tensor of the same shape and dtype as ``input``.

    Raises:
        ValueError: for an input with fewer than 2 dimensions or a channel count other than
            ``running_mean``'s, or (in training) an invalid ``momentum``, ``eps``, ``r_max`` or ``d_max``.
    """
    if input.dim() < 2 or input.shape[1] != running_mean.shape[0]:
        raise ValueError(
            f"expected input of shape (N, {running_mean.shape[0]}, *) (got input of shape {tuple(input.shape)})"
        )
    x = input.float() if input.dtype in _LOW_PRECISION else input
    if not training:
        out = F.batch_norm(x, running_mean, running_var, weight, bias, False, 0.0, eps)
        return out if x is input else out.to(input.dtype)

    _check_hyperparameters(momentum, eps, r_max, d_max)
    count = x.numel() // x.shape[1]
    synced = sync_stats and dist.is_available() and dist.is_initialized()
    if synced:
        mean_ad, var_ad, total = _synced_moments(
            x, dist.group.WORLD if process_group is None else process_group
        )
        mean, var = mean_ad.detach(), var_ad.detach()
    elif count > 1:
        # One fused statistics pass. The running statistics are updated below, not by this op:
        # its schema does not declare that it mutates them, which torch.compile would mis-trace.
        mean, var = torch.batch_norm_update_stats(x.detach(), None, None, momentum)
    else:
        var_ad, mean_ad = torch.var_mean(x, (0, *range(2, x.dim())), correction=0)
        mean, var = mean_ad.detach(), var_ad.detach()
    inv_std = torch.rsqrt(running_var + eps)
    r = var.add(eps).sqrt_().mul_(inv_std)
    d = torch.sub(mean, running_mean).mul_(inv_std)
    if torch.compiler.is_compiling():
        # Inductor bakes float bounds of ``clamp`` into the graph, which would recompile at every
        # new r_max/d_max; as tensors they stay inputs of one graph.
        one = torch.ones_like(r)
        r = torch.clamp(r, one / r_max, one * r_max)
        d = torch.clamp(d, one * -d_max, one * d_max)
    else:
        r.clamp_(1.0 / r_max, r_max)
        d.clamp_(-d_max, d_max)
    w, b = _fold_affine(weight, bias, r, d)

    running_mean.lerp_(mean, momentum)
    if synced:
        # ``total`` is a tensor: skip the variance update without a host sync when it is 1.
        unbiased = var * (total / (total - 1).clamp_min(1.0))
        running_var.lerp_(unbiased, (total > 1).to(running_var.dtype) * momentum)
    elif count > 1:
        running_var.lerp_(var.mul_(count / (count - 1)), momentum)

    if not synced and count > 1:
        # With r and d fixed per channel, batch renorm is batch norm with weight w = weight * r and
        # bias b = weight * d + bias: the native kernel gives the output and, through autograd
        # (w and b depend on weight and bias only), the exact gradients.
        out = torch.batch_norm(x, w, b, None, None, True, 0.0, eps, torch.backends.cudnn.enabled)
    else:
        # Batch statistics across ranks, or a single value per channel: the formula in autograd ops.
        shape = (-1, *([1] * (x.dim() - 2)))
        scale = torch.rsqrt(var_ad + eps) * w
        out = torch.addcmul(b.view(shape), x - mean_ad.view(shape), scale.view(shape))
    return out if x is input else out.to(input.dtype)


class BatchRenorm1d(nn.Module):
    r"""Applies Batch Renormalization over a 2D or 3D input.

    Method described in the paper
    `Batch Renormalization: Towards Reducing Minibatch Dependence in Batch-Normalized Models
    <https://arxiv.org/abs/1702.03275>`__ .

    In training mode, per channel,

    .. math::

        r = \mathrm{clip}\Big(\frac{\sigma_B}{\sigma}, \frac{1}{r_{max}}, r_{max}\Big), \quad
        d = \mathrm{clip}\Big(\frac{\mu_B - \mu}{\sigma}, -d_{max}, d_{max}\Big), \quad
        y = \gamma \Big(\frac{x - \mu_B}{\sigma_B} r + d\Big) + \beta

    where :math:`\mu_B` and :math:`\sigma_B = \sqrt{\mathrm{Var}_B[x] + \epsilon}` (biased variance)
    are the statistics of the mini-batch, :math:`\mu` and :math:`\sigma = \sqrt{\text{running\_var} + \epsilon}`
    the running statistics before this batch's update, and :math:`r, d` are treated as constants by
    autograd. In eval mode

    .. math::

        y = \gamma \frac{x - \mu}{\sigma} + \beta

    so every row is normalized independently of the rest of the batch. When ``r`` and ``d`` are not
    clipped the training output equals the eval output; with ``r_max = 1`` and ``d_max = 0`` (the
    defaults) the layer is exactly :class:`torch.nn.BatchNorm1d`. :attr:`r_max` and :attr:`d_max` are
    plain float attributes read at every forward, so a schedule may change them at every step (see
    :func:`model.schedule.renorm_limits`).

    The parameters and buffers (``weight``, ``bias``, ``running_mean``, ``running_var``,
    ``num_batches_tracked``) have the names, initial values and update rules of
    :class:`torch.nn.BatchNorm1d` (``momentum`` weights the new batch, ``running_var`` receives the
    unbiased batch variance), so state dicts load both ways with ``strict=True``.

    float16/bfloat16 inputs are normalized in float32 and returned in their own dtype; parameters and
    buffers stay float32. A training batch with one value per channel (:math:`N \cdot L = 1`) gives
    :math:`y = \gamma d + \beta` and leaves ``running_var`` unchanged instead of raising.

    For data-parallel training set :attr:`sync_stats` to ``True``: while :mod:`torch.distributed` is
    initialized the batch moments are then computed over all ranks of :attr:`process_group` (one
    differentiable all-reduce of sum, sum of squares and count; works on gloo/CPU, unlike
    :class:`torch.nn.SyncBatchNorm`). Otherwise each rank normalizes with its local batch and
    :meth:`average_running_stats` can reconcile the running statistics, e.g. before saving.

    .. note::
        This class deliberately does not subclass ``torch.nn.modules.batchnorm._BatchNorm``:
        :meth:`torch.nn.SyncBatchNorm.convert_sync_batchnorm` would silently replace it with a plain
        (synchronized) batch norm layer.

    Args:
        num_features: number of features or channels :math:`C` of the input
        eps: a value added to the variances for numerical stability. Default: 1e-5
        momentum: the value used for the running_mean and running_var computation. Default: 0.01
        affine: a boolean value that when set to ``True``, this module has learnable affine
            parameters. Default: ``True``
        r_max: upper clip bound of :math:`r` (:math:`\geq 1`). Default: 1
        d_max: clip bound of :math:`|d|` (:math:`\geq 0`). Default: 0
        sync_stats: compute the training batch statistics across ranks. Default: ``False``
        process_group: process group for :attr:`sync_stats` and :meth:`average_running_stats`;
            ``None`` means the default group. Default: ``None``

    Shape:
        - Input: :math:`(N, C)` or :math:`(N, C, L)`, where :math:`N` is the batch size,
          :math:`C` is the number of features or channels, and :math:`L` is the sequence length
        - Output: :math:`(N, C)` or :math:`(N, C, L)` (same shape as input)

    Examples::

        >>> m = BatchRenorm1d(100, r_max=3.0, d_max=5.0)
        >>> input = torch.randn(20, 100)
        >>> output = m(input)
        >>> # A schedule may change the clip bounds at every optimizer step:
        >>> from model.schedule import renorm_limits
        >>> m.r_max, m.d_max = renorm_limits(step=20_000, total_steps=160_000)
    """

    # Version 2 of BatchNorm's state dict layout (with ``num_batches_tracked``), so that
    # BatchNorm1d.load_state_dict does not treat our state dict as a legacy one.
    _version = 2
    num_features: int
    eps: float
    momentum: float
    affine: bool
    r_max: float
    d_max: float
    sync_stats: bool
    process_group: ProcessGroup | None
    weight: nn.Parameter | None
    bias: nn.Parameter | None
    running_mean: Tensor
    running_var: Tensor
    num_batches_tracked: Tensor

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.01,
        affine: bool = True,
        r_max: float = 1.0,
        d_max: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        sync_stats: bool = False,
        process_group: ProcessGroup | None = None,
    ) -> None:
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features <= 0:
            raise ValueError(f"num_features must be a positive integer (got {num_features!r})")
        _check_hyperparameters(momentum, eps, r_max, d_max)
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.r_max = float(r_max)
        self.d_max = float(d_max)
        self.sync_stats = sync_stats
        self.process_group = process_group
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features, **factory_kwargs))
            self.bias = nn.Parameter(torch.zeros(num_features, **factory_kwargs))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(num_features, **factory_kwargs))
        self.register_buffer("running_var", torch.ones(num_features, **factory_kwargs))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))

    def reset_running_stats(self) -> None:
        """Reset ``running_mean`` to 0, ``running_var`` to 1 and ``num_batches_tracked`` to 0."""
        self.running_mean.zero_()
        self.running_var.fill_(1.0)
        self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Reset the running statistics and, when affine, ``weight`` to 1 and ``bias`` to 0."""
        self.reset_running_stats()
        if self.weight is not None and self.bias is not None:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def _check_input_dim(self, input: Tensor) -> None:
        """Raise ``ValueError`` unless ``input`` is 2D or 3D with :attr:`num_features` channels."""
        if input.dim() != 2 and input.dim() != 3:
            raise ValueError(f"expected 2D or 3D input (got {input.dim()}D input)")
        if input.shape[1] != self.num_features:
            raise ValueError(
                f"expected input with {self.num_features} channels at dim 1 (got {input.shape[1]} channels)"
            )

    def forward(self, input: Tensor) -> Tensor:
        """Renormalize ``input`` of shape ``(N, C)`` or ``(N, C, L)``; see the class docstring."""
        self._check_input_dim(input)
        if self.training:
            self.num_batches_tracked.add_(1)
        return batch_renorm(
            input,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training,
            self.momentum,
            self.eps,
            self.r_max,
            self.d_max,
            sync_stats=self.sync_stats,
            process_group=self.process_group,
        )

    @torch.no_grad()
    def average_running_stats(self, process_group: ProcessGroup | None = None) -> None:
        """Replace ``running_mean`` and ``running_var`` by their average over the ranks of a group.

        Meant for training without :attr:`sync_stats`, at intervals and before saving, so that all
        ranks hold (and save) the same statistics. Every rank of the group must call it. The
        variances are averaged arithmetically. A no-op when :mod:`torch.distributed` is not
        initialized.

        Args:
            process_group: the group to average over; ``None`` means :attr:`process_group`, and the
                default group when that is ``None`` too.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return
        group = process_group if process_group is not None else self.process_group
        stats = torch.cat((self.running_mean, self.running_var))
        dist.all_reduce(stats, op=dist.ReduceOp.SUM, group=group)
        stats /= dist.get_world_size(group)
        self.running_mean.copy_(stats[: self.num_features])
        self.running_var.copy_(stats[self.num_features :])

    def extra_repr(self) -> str:
        """Describe the layer like :class:`torch.nn.BatchNorm1d` does, plus the clip bounds."""
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"r_max={self.r_max}, d_max={self.d_max}, sync_stats={self.sync_stats}"
        )
