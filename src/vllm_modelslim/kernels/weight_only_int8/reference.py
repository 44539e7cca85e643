"""Plain-torch float64 oracle of the weight-only int8 GEMM (always available)."""

from __future__ import annotations

from vllm_modelslim.kernels.weight_only_int8.base import WeightOnlyInt8Kernel
from vllm_modelslim.kernels.weight_only_reference import dequantize_weight, weight_only_reference

dequantize_int8_weight = dequantize_weight
"""``(w_q − z) · s`` per output channel (scales and zero points ``[N]``), ``[N, K]`` float64."""

weight_only_int8_reference = weight_only_reference
"""``x · ((w_q − z)·s)ᵀ + b`` in float64 with per-channel ``s, z`` ``[N]``."""


class ReferenceWeightOnlyInt8(WeightOnlyInt8Kernel):
    """The oracle as a kernel: slow, runs anywhere torch does."""

    name = "reference"

    def forward(self, x, bias):  # noqa: D102
        return weight_only_reference(x, self.weight, self.weight_scale, self.zero_point, bias)
