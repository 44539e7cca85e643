"""Plain-torch float64 oracle of the weight-only GEMM (int8 per-channel, int4 per-group; always available).

A per-channel scale is the one-group case of per-group scales, so one
dequantization serves both: ``W[n, k] = (q[n, k] − z[n, j]) · s[n, j]`` with
``j = k // (K / G)``, then ``y = x · Wᵀ + b``, all in float64.
"""

from __future__ import annotations

import torch

from vllm_modelslim.kernels.weight_only.base import WeightOnlyKernel


def dequantize_weight(
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """``(q − z)·s`` as ``[N, K]`` in ``dtype``, computed in float64.

    Args:
        weight: int8 ``[N, K]`` (int8 or int4 values).
        weight_scale: ``[N]``, ``[N, 1]`` or per-group ``[N, G]`` (``G`` divides K).
        zero_point: same shape as ``weight_scale``, or None.

    Raises:
        RuntimeError: ``G`` does not divide K (from ``unflatten``).
    """
    groups = weight_scale.shape[1] if weight_scale.dim() == 2 else 1
    q = weight.to(torch.float64).unflatten(1, (groups, -1))
    if zero_point is not None:
        q = q - zero_point.to(torch.float64).reshape(weight.shape[0], groups, 1)
    return (q * weight_scale.to(torch.float64).reshape(weight.shape[0], groups, 1)).flatten(1).to(dtype)


def weight_only_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    zero_point: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``x · ((q − z)·s)ᵀ + b`` in float64, cast to ``out_dtype`` (default ``x.dtype``).

    Args:
        x: ``[M, K]``; weight, weight_scale, zero_point: as in :func:`dequantize_weight`;
        bias: ``[N]`` or None.

    Returns:
        ``[M, N]``.
    """
    y = x.to(torch.float64) @ dequantize_weight(weight, weight_scale, zero_point).T
    if bias is not None:
        y = y + bias.to(torch.float64)
    return y.to(out_dtype or x.dtype)


class ReferenceWeightOnly(WeightOnlyKernel):
    """The oracle as a kernel: slow, runs anywhere torch does."""

    name = "reference"

    def forward(self, x, bias):  # noqa: D102
        return weight_only_reference(x, self.weight, self.weight_scale, self.zero_point, bias)
