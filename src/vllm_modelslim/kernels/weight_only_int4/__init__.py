"""Weight-only int4 GEMM with per-group scales (W4A16): interface, kernels, selection."""

from __future__ import annotations

import torch

from vllm_modelslim.kernels.selection import choose_kernel
from vllm_modelslim.kernels.weight_only_int4.base import WeightOnlyInt4Config, WeightOnlyInt4Kernel
from vllm_modelslim.kernels.weight_only_int4.cpu_int4pack import CpuInt4PackWeightOnlyInt4
from vllm_modelslim.kernels.weight_only_int4.dequant_matmul import DequantMatmulWeightOnlyInt4
from vllm_modelslim.kernels.weight_only_int4.reference import (
    ReferenceWeightOnlyInt4,
    dequantize_int4_weight,
    weight_only_int4_reference,
)

WEIGHT_ONLY_INT4_KERNELS: list[type[WeightOnlyInt4Kernel]] = [
    CpuInt4PackWeightOnlyInt4,
    DequantMatmulWeightOnlyInt4,
    ReferenceWeightOnlyInt4,
]
"""Priority order; the reference kernel always qualifies."""


def make_weight_only_int4(
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    act_dtype: torch.dtype,
    kernel: type[WeightOnlyInt4Kernel] | None = None,
) -> WeightOnlyInt4Kernel:
    """Build the best kernel for int4 weights ``[N, K]`` (int8 storage) with group scales ``[N, K/g]``.

    Args:
        weight: int8 ``[N, K]`` with values in [−8, 7].
        weight_scale: ``[N, G]``, ``G`` dividing K (group size ``g = K / G``).
        zero_point: ``[N, G]`` (subtracted before scaling) or None; all-zero is treated as None.
        act_dtype: the activation (model) dtype.
        kernel: force a kernel class instead of selecting one.

    Raises:
        ValueError: ``G`` does not divide K, or shapes disagree.
        RuntimeError: a forced ``kernel`` cannot run this case on this device.
    """
    out_features, in_features = weight.shape
    if (
        weight_scale.dim() != 2
        or weight_scale.shape[0] != out_features
        or in_features % weight_scale.shape[1]
    ):
        raise ValueError(
            f"group scales {tuple(weight_scale.shape)} do not fit a weight {tuple(weight.shape)}"
        )
    if zero_point is not None and zero_point.shape != weight_scale.shape:
        raise ValueError(
            f"zero points {tuple(zero_point.shape)} differ from scales {tuple(weight_scale.shape)}"
        )
    if zero_point is not None and not torch.any(zero_point != 0):
        zero_point = None
    config = WeightOnlyInt4Config(
        in_features=in_features,
        out_features=out_features,
        group_size=in_features // weight_scale.shape[1],
        act_dtype=act_dtype,
        has_zero_point=zero_point is not None,
        device_type=weight.device.type,
    )
    cls = choose_kernel([kernel] if kernel else WEIGHT_ONLY_INT4_KERNELS, config)
    return cls(config, weight, weight_scale, zero_point)


__all__ = [
    "WEIGHT_ONLY_INT4_KERNELS",
    "CpuInt4PackWeightOnlyInt4",
    "DequantMatmulWeightOnlyInt4",
    "ReferenceWeightOnlyInt4",
    "WeightOnlyInt4Config",
    "WeightOnlyInt4Kernel",
    "dequantize_int4_weight",
    "make_weight_only_int4",
    "weight_only_int4_reference",
]
