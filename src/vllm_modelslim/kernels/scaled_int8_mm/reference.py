"""Plain-torch float64 oracle of the scaled int8 GEMM (always available)."""

from __future__ import annotations

import torch

from vllm_modelslim.kernels.scaled_int8_mm.base import ScaledInt8MMKernel


def scaled_int8_mm_reference(
    x_q: torch.Tensor,
    x_scale: torch.Tensor | None,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    int_bias: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """``((x_q·w_qᵀ + b_int) · s_x · s_w + b)`` computed in float64, then cast.

    Float64 holds every int32 accumulator exactly (|acc| < 2^53), so the
    accumulation is exact and the epilogue has float64 rounding only. A 2-D
    ``weight_scale`` ``[N, G]`` means per-group scales over ``K / G`` inputs.

    Args:
        x_q: int8 ``[M, K]``; x_scale: ``[M]`` or None; weight: int8 ``[N, K]``;
        weight_scale: ``[N]`` or ``[N, G]``; int_bias: int32 ``[N]`` or None; bias: ``[N]`` or None.

    Returns:
        ``[M, N]`` in ``out_dtype``.
    """
    if weight_scale.dim() == 2 and weight_scale.shape[1] > 1:
        groups = weight_scale.shape[1]
        x_g = x_q.to(torch.float64).unflatten(1, (groups, -1)).transpose(0, 1)  # [G, M, g]
        w_g = weight.to(torch.float64).unflatten(1, (groups, -1)).permute(1, 2, 0)  # [G, g, N]
        acc_g = torch.bmm(x_g, w_g)  # [G, M, N], exact integers
        y = (acc_g * weight_scale.to(torch.float64).T.unsqueeze(1)).sum(dim=0)
        if x_scale is not None:
            y = y * x_scale.to(torch.float64).reshape(-1, 1)
        if bias is not None:
            y = y + bias.to(torch.float64)
        return y.to(out_dtype)
    acc = x_q.to(torch.float64) @ weight.to(torch.float64).T
    if int_bias is not None:
        acc = acc + int_bias.to(torch.float64)
    if x_scale is not None:
        acc = acc * x_scale.to(torch.float64).reshape(-1, 1)
    y = acc * weight_scale.to(torch.float64).reshape(-1)
    if bias is not None:
        y = y + bias.to(torch.float64)
    return y.to(out_dtype)


class ReferenceScaledInt8MM(ScaledInt8MMKernel):
    """The oracle as a kernel: slow, exact, runs anywhere torch does."""

    name = "reference"

    def forward(self, x_q, x_scale, bias, out_dtype):  # noqa: D102
        return scaled_int8_mm_reference(
            x_q, x_scale, self.weight, self.weight_scale, self.int_bias, bias, out_dtype
        )
