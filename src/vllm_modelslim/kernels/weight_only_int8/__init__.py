"""Weight-only int8 GEMM (W8A16): interface, kernels, selection."""

from __future__ import annotations

import torch

from vllm_modelslim.kernels.selection import choose_kernel
from vllm_modelslim.kernels.weight_only_int8.base import WeightOnlyInt8Config, WeightOnlyInt8Kernel
from vllm_modelslim.kernels.weight_only_int8.dequant_matmul import DequantMatmulWeightOnlyInt8
from vllm_modelslim.kernels.weight_only_int8.int8pack import Int8PackWeightOnlyInt8
from vllm_modelslim.kernels.weight_only_int8.reference import (
    ReferenceWeightOnlyInt8,
    dequantize_int8_weight,
    weight_only_int8_reference,
)

WEIGHT_ONLY_INT8_KERNELS: list[type[WeightOnlyInt8Kernel]] = [
    Int8PackWeightOnlyInt8,
    DequantMatmulWeightOnlyInt8,
    ReferenceWeightOnlyInt8,
]
"""Priority order; the reference kernel always qualifies."""


def make_weight_only_int8(
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    act_dtype: torch.dtype,
    kernel: type[WeightOnlyInt8Kernel] | None = None,
) -> WeightOnlyInt8Kernel:
    """Build the best kernel for int8 weights ``[N, K]`` with scales/zero points ``[N]``.

    Args:
        weight: int8 ``[N, K]``.
        weight_scale: ``[N]``.
        zero_point: ``[N]`` (subtracted before scaling) or None; an all-zero
            tensor is treated as None.
        act_dtype: the activation (model) dtype.
        kernel: force a kernel class instead of selecting one.

    Raises:
        RuntimeError: a forced ``kernel`` cannot run this case on this device.
    """
    if zero_point is not None and not torch.any(zero_point != 0):
        zero_point = None
    config = WeightOnlyInt8Config(
        in_features=weight.shape[1],
        out_features=weight.shape[0],
        act_dtype=act_dtype,
        has_zero_point=zero_point is not None,
        device_type=weight.device.type,
    )
    cls = choose_kernel([kernel] if kernel else WEIGHT_ONLY_INT8_KERNELS, config)
    return cls(config, weight, weight_scale, zero_point)


__all__ = [
    "WEIGHT_ONLY_INT8_KERNELS",
    "DequantMatmulWeightOnlyInt8",
    "Int8PackWeightOnlyInt8",
    "ReferenceWeightOnlyInt8",
    "WeightOnlyInt8Config",
    "WeightOnlyInt8Kernel",
    "dequantize_int8_weight",
    "make_weight_only_int8",
    "weight_only_int8_reference",
]
