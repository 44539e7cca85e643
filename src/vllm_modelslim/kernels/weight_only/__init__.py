"""Weight-only GEMM (W8A16 int8 per-channel, W4A16 int4 per-group): interface, kernels, selection.

One family: int8 weights with per-channel scales are the one-group case of
grouped scales (``g = K``), so the portable and reference kernels serve both
widths. The torch CPU ops keep their own kernels, as their layouts differ:
the project's AVX-512 ``int8_weight_linear`` (few rows) and
``aten._weight_int8pack_mm`` (int8, per-channel) head the int8 list on CPU,
``aten._weight_int4pack_mm_for_cpu`` (packed nibbles) the int4 list. On CUDA
vLLM's Machete (sm90) and Marlin kernels come first in both (one class each,
any width they support; see :mod:`vllm_modelslim.kernels.weight_only.vllm_gptq`).
"""

from __future__ import annotations

from typing import Any

import torch

from vllm_modelslim.kernels.selection import choose_kernel, priority_list
from vllm_modelslim.kernels.weight_only.avx512_bf16_int4 import Avx512Bf16WeightOnlyInt4
from vllm_modelslim.kernels.weight_only.avx512_int8 import Avx512WeightOnlyInt8
from vllm_modelslim.kernels.weight_only.avx512_vnni_int8 import Avx512VnniWeightOnlyInt8
from vllm_modelslim.kernels.weight_only.base import WeightOnlyConfig, WeightOnlyKernel, zero_point_kind
from vllm_modelslim.kernels.weight_only.cpu_int4pack import CpuInt4PackWeightOnlyInt4
from vllm_modelslim.kernels.weight_only.dequant_matmul import DequantMatmulWeightOnly
from vllm_modelslim.kernels.weight_only.int8pack import Int8PackWeightOnlyInt8
from vllm_modelslim.kernels.weight_only.reference import (
    ReferenceWeightOnly,
    dequantize_weight,
    weight_only_reference,
)
from vllm_modelslim.kernels.weight_only.vllm_machete import VllmMacheteWeightOnly
from vllm_modelslim.kernels.weight_only.vllm_marlin import VllmMarlinWeightOnly

WEIGHT_ONLY_INT8_KERNELS: list[type[WeightOnlyKernel]] = priority_list(
    VllmMacheteWeightOnly,
    VllmMarlinWeightOnly,
    Avx512VnniWeightOnlyInt8,
    Avx512WeightOnlyInt8,
    Int8PackWeightOnlyInt8,
    DequantMatmulWeightOnly,
    ReferenceWeightOnly,
)
"""Priority order for int8 weights (CUDA: Machete on sm90, then Marlin); the reference always qualifies."""

WEIGHT_ONLY_INT4_KERNELS: list[type[WeightOnlyKernel]] = priority_list(
    VllmMacheteWeightOnly,
    VllmMarlinWeightOnly,
    Avx512Bf16WeightOnlyInt4,
    CpuInt4PackWeightOnlyInt4,
    DequantMatmulWeightOnly,
    ReferenceWeightOnly,
)
"""Priority order for int4 weights (CUDA: Machete on sm90, then Marlin); the reference always qualifies."""

WeightOnlyInt8Kernel = WeightOnlyInt4Kernel = WeightOnlyKernel
dequantize_int8_weight = dequantize_int4_weight = dequantize_weight
"""``(q − z)·s`` with scales and zero points ``[N]`` or ``[N, K/g]``, as ``[N, K]`` float64."""
weight_only_int8_reference = weight_only_int4_reference = weight_only_reference
"""``x · ((q − z)·s)ᵀ + b`` in float64, scales and zero points ``[N]`` or ``[N, K/g]``."""


def make_weight_only(
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    act_dtype: torch.dtype,
    *,
    bits: int,
    kernel: type[WeightOnlyKernel] | None = None,
    label: str | None = None,
) -> WeightOnlyKernel:
    """Build the best kernel for int8-stored weights ``[N, K]`` with per-channel or group scales.

    Args:
        weight: int8 ``[N, K]``, values in [−8, 7] when ``bits`` is 4.
        weight_scale: per channel ``[N]`` or ``[N, 1]``, or per group ``[N, G]``
            with ``G`` dividing K (group size ``g = K / G``).
        zero_point: same shape as ``weight_scale`` (subtracted before scaling)
            or None; an all-zero tensor is treated as None.
        act_dtype: the activation (model) dtype.
        bits: 8 or 4: picks the priority list.
        kernel: force a kernel class instead of selecting one.
        label: what the layer is (e.g. a scheme's quant type), for the selection log line.

    Raises:
        ValueError: ``bits`` is not 8 or 4, ``G`` does not divide K, shapes
            disagree, or ``VLLM_MODELSLIM_DISABLED_KERNELS`` is invalid.
        RuntimeError: a forced ``kernel`` cannot run this case on this device.
    """
    kernels = {8: WEIGHT_ONLY_INT8_KERNELS, 4: WEIGHT_ONLY_INT4_KERNELS}.get(bits)
    if kernels is None:
        raise ValueError(f"weight-only kernels take 8- or 4-bit weights, not {bits}-bit")
    out_features, in_features = weight.shape
    if weight_scale.dim() == 1:
        weight_scale = weight_scale.reshape(-1, 1)
    if zero_point is not None and zero_point.dim() == 1:
        zero_point = zero_point.reshape(-1, 1)
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
    config = WeightOnlyConfig(
        in_features=in_features,
        out_features=out_features,
        group_size=in_features // weight_scale.shape[1],
        act_dtype=act_dtype,
        bits=bits,
        device_type=weight.device.type,
        zero_points=zero_point_kind(zero_point, bits),
    )
    scales = "per-channel" if config.per_channel else "per-group"
    purpose = f"weight-only int{bits} GEMM, {scales} scales"
    cls = choose_kernel(kernels, config, f"{label} ({purpose})" if label else purpose, forced=kernel)
    return cls(config, weight, weight_scale, zero_point)


def make_weight_only_int8(
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    act_dtype: torch.dtype,
    **options: Any,
) -> WeightOnlyKernel:
    """:func:`make_weight_only` for int8 weights, usually with per-channel scales/zero points ``[N]``.

    ``options``: ``kernel``, ``label``. Raises as :func:`make_weight_only`.
    """
    return make_weight_only(weight, weight_scale, zero_point, act_dtype, bits=8, **options)


def make_weight_only_int4(
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    act_dtype: torch.dtype,
    **options: Any,
) -> WeightOnlyKernel:
    """:func:`make_weight_only` for int4 weights (values in [−8, 7]), usually with group scales ``[N, K/g]``.

    ``options``: ``kernel``, ``label``. Raises as :func:`make_weight_only`.
    """
    return make_weight_only(weight, weight_scale, zero_point, act_dtype, bits=4, **options)


__all__ = [
    "WEIGHT_ONLY_INT4_KERNELS",
    "Avx512WeightOnlyInt8",
    "WEIGHT_ONLY_INT8_KERNELS",
    "Avx512Bf16WeightOnlyInt4",
    "Avx512VnniWeightOnlyInt8",
    "CpuInt4PackWeightOnlyInt4",
    "DequantMatmulWeightOnly",
    "Int8PackWeightOnlyInt8",
    "ReferenceWeightOnly",
    "VllmMacheteWeightOnly",
    "VllmMarlinWeightOnly",
    "WeightOnlyConfig",
    "WeightOnlyInt4Kernel",
    "WeightOnlyInt8Kernel",
    "WeightOnlyKernel",
    "dequantize_int4_weight",
    "dequantize_int8_weight",
    "dequantize_weight",
    "make_weight_only",
    "make_weight_only_int4",
    "make_weight_only_int8",
    "weight_only_int4_reference",
    "weight_only_int8_reference",
    "weight_only_reference",
]
