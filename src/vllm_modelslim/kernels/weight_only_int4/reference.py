"""Plain-torch float64 oracle of the weight-only int4 GEMM (always available)."""

from __future__ import annotations

import torch

from vllm_modelslim.kernels.weight_only_int4.base import WeightOnlyInt4Kernel


def dequantize_int4_weight(
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """``(q − z)·s`` with per-group ``s, z`` ``[N, K/g]``, as ``[N, K]`` in ``dtype`` (float64 math)."""
    groups = weight_scale.shape[1]
    q = weight.to(torch.float64).unflatten(1, (groups, -1))
    if zero_point is not None:
        q = q - zero_point.to(torch.float64).unsqueeze(-1)
    return (q * weight_scale.to(torch.float64).unsqueeze(-1)).flatten(1).to(dtype)


def weight_only_int4_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    zero_point: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``x · ((q − z)·s)ᵀ + b`` in float64, cast to ``out_dtype`` (default ``x.dtype``).

    Args:
        x: ``[M, K]``; weight: int8 ``[N, K]`` holding int4 values; weight_scale
        and zero_point: ``[N, K/g]``; bias: ``[N]`` or None.
    """
    y = x.to(torch.float64) @ dequantize_int4_weight(weight, weight_scale, zero_point).T
    if bias is not None:
        y = y + bias.to(torch.float64)
    return y.to(out_dtype or x.dtype)


class ReferenceWeightOnlyInt4(WeightOnlyInt4Kernel):
    """The oracle as a kernel: slow, runs anywhere torch does."""

    name = "reference"

    def forward(self, x, bias):  # noqa: D102
        return weight_only_int4_reference(x, self.weight, self.weight_scale, self.zero_point, bias)
