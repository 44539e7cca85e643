"""Portable weight-only int4 kernel: dequantize to the activation dtype, then ``F.linear``."""

from __future__ import annotations

import torch.nn.functional as F

from vllm_modelslim.kernels.weight_only_int4.base import WeightOnlyInt4Kernel


class DequantMatmulWeightOnlyInt4(WeightOnlyInt4Kernel):
    """``F.linear(x, ((q − z)·s).to(x.dtype), b)``: any device and dtype, a dequantization per call."""

    name = "dequant_matmul"

    def forward(self, x, bias):  # noqa: D102
        return F.linear(x, self.dequantize(x.dtype), None if bias is None else bias.to(x.dtype))
