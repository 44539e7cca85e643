"""Plain-torch float64 oracle of the weight-only int8 GEMM (always available)."""

from __future__ import annotations

import torch

from vllm_modelslim.kernels.weight_only_int8.base import WeightOnlyInt8Kernel


def dequantize_int8_weight(
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """``(w_q − z) · s`` per output channel, ``[N, K]`` in ``dtype`` (computed in float64)."""
    w = weight.to(torch.float64)
    if zero_point is not None:
        w = w - zero_point.to(torch.float64).reshape(-1, 1)
    return (w * weight_scale.to(torch.float64).reshape(-1, 1)).to(dtype)


def weight_only_int8_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    zero_point: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``x · ((w_q − z)·s)ᵀ + b`` in float64, cast to ``out_dtype`` (default ``x.dtype``).

    Args:
        x: ``[M, K]`` float; weight: int8 ``[N, K]``; weight_scale: ``[N]``;
        zero_point: ``[N]`` or None; bias: ``[N]`` or None.
    """
    y = x.to(torch.float64) @ dequantize_int8_weight(weight, weight_scale, zero_point).T
    if bias is not None:
        y = y + bias.to(torch.float64)
    return y.to(out_dtype or x.dtype)


class ReferenceWeightOnlyInt8(WeightOnlyInt8Kernel):
    """The oracle as a kernel: slow, runs anywhere torch does."""

    name = "reference"

    def forward(self, x, bias):  # noqa: D102
        return weight_only_int8_reference(x, self.weight, self.weight_scale, self.zero_point, bias)
