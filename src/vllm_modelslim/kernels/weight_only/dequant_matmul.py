"""Portable weight-only kernel: dequantize to the activation dtype, then ``F.linear``.

It keeps the int8/int4 weight in memory but pays a dequantization per call,
so it is a fallback (fp32 models on CPU, shapes the fused CPU ops refuse,
GPUs until a fused kernel lands), not a fast path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vllm_modelslim.kernels.weight_only.base import WeightOnlyKernel


class DequantMatmulWeightOnly(WeightOnlyKernel):
    """``F.linear(x, ((q − z)·s).to(x.dtype), b)``: any device, dtype and group size."""

    name = "dequant_matmul"

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        """``(q − z)·s`` as ``[N, K]`` in ``dtype`` (computed in float32)."""
        w = self.weight.to(torch.float32).unflatten(1, (-1, self.config.group_size))
        if self.zero_point is not None:
            w = w - self.zero_point.unsqueeze(-1)
        return (w * self.weight_scale.unsqueeze(-1)).flatten(1).to(dtype)

    def forward(self, x, bias):  # noqa: D102
        return F.linear(x, self.dequantize(x.dtype), None if bias is None else bias.to(x.dtype))
