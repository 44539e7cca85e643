"""Portable weight-only kernel: dequantize to the activation dtype, then ``F.linear``.

It keeps int8 weights in memory but pays a dequantization per call, so it is a
fallback (fp32 models on CPU, GPUs until a fused kernel lands), not a fast path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vllm_modelslim.kernels.weight_only_int8.base import WeightOnlyInt8Kernel


class DequantMatmulWeightOnlyInt8(WeightOnlyInt8Kernel):
    """``F.linear(x, ((w_q − z)·s).to(x.dtype), b)``; the dequantization runs in float32."""

    name = "dequant_matmul"

    def forward(self, x, bias):  # noqa: D102
        w = self.weight.to(torch.float32)
        if self.zero_point is not None:
            w = w - self.zero_point.unsqueeze(1)
        w = (w * self.weight_scale.unsqueeze(1)).to(x.dtype)
        return F.linear(x, w, None if bias is None else bias.to(x.dtype))
