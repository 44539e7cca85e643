"""Plain-torch float64 oracle of the weight-only int4 GEMM (always available)."""

from __future__ import annotations

from vllm_modelslim.kernels.weight_only_int4.base import WeightOnlyInt4Kernel
from vllm_modelslim.kernels.weight_only_reference import dequantize_weight, weight_only_reference

dequantize_int4_weight = dequantize_weight
"""``(q − z)·s`` with per-group ``s, z`` ``[N, K/g]``, as ``[N, K]`` float64."""

weight_only_int4_reference = weight_only_reference
"""``x · ((q − z)·s)ᵀ + b`` in float64 with per-group ``s, z`` ``[N, K/g]``."""


class ReferenceWeightOnlyInt4(WeightOnlyInt4Kernel):
    """The oracle as a kernel: slow, runs anywhere torch does."""

    name = "reference"

    def forward(self, x, bias):  # noqa: D102
        return weight_only_reference(x, self.weight, self.weight_scale, self.zero_point, bias)
