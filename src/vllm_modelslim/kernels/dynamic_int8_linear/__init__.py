"""Dynamic int8 linear layers in one call: per-token quantization of ``x`` and the integer GEMM together.

Math and interface: :mod:`~vllm_modelslim.kernels.dynamic_int8_linear.base`.
Priority list: :class:`Int4VnniLinear` (the project's own AVX-512 VNNI
kernel, int4 weights kept as int4), :class:`VllmCpuInt8ScaledMMWithQuant`
(vLLM-CPU's op, int8 or int4-valued weights held in int8), then
:class:`QuantizerAndGemm`, the reference: never built; choosing it keeps the
two-kernel path (the oracle the fused kernels are tested against).
"""

from __future__ import annotations

import torch

from vllm_modelslim.kernels.dynamic_int8_linear.base import (
    DynamicInt8LinearConfig,
    DynamicInt8LinearKernel,
    QuantizerAndGemm,
)
from vllm_modelslim.kernels.dynamic_int8_linear.int4_vnni import Int4VnniLinear
from vllm_modelslim.kernels.dynamic_int8_linear.vllm_cpu_with_quant import VllmCpuInt8ScaledMMWithQuant
from vllm_modelslim.kernels.selection import choose_kernel, priority_list

DYNAMIC_INT8_LINEAR_KERNELS: list[type[DynamicInt8LinearKernel]] = priority_list(
    Int4VnniLinear,
    VllmCpuInt8ScaledMMWithQuant,
    QuantizerAndGemm,
)
"""Priority order; the two-kernel path always qualifies."""


def make_dynamic_int8_linear(
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    activation_dtype: torch.dtype,
    rank_row_max: bool = False,
    label: str | None = None,
    weight_bits: int = 8,
    activation_bits: int = 8,
) -> DynamicInt8LinearKernel | None:
    """The fused kernel for this layer, or None when the two-kernel path is the choice (logged).

    Args:
        weight: int8 (or int4-valued) ``[N, K]``.
        weight_scale: per-output-channel float ``[N]`` or ``[N, 1]``.
        activation_dtype: the layer's activation dtype.
        rank_row_max: the layer's per-token scales span tensor-parallel ranks.
        label: what the layer is, for the selection log line.
        weight_bits: 8, or 4 when every weight value is in [−8, 7].
        activation_bits: 8, or 4 (W4A4_DYNAMIC's ``qmax`` = 7).

    Raises:
        ValueError: ``VLLM_MODELSLIM_DISABLED_KERNELS`` is invalid, or the scale is not per channel.
    """
    if weight_scale.numel() != weight.shape[0]:
        raise ValueError(f"per-channel scales expected: {weight_scale.numel()} for {weight.shape[0]} rows")
    config = DynamicInt8LinearConfig(
        device_type=weight.device.type,
        activation_dtype=activation_dtype,
        in_features=weight.shape[1],
        out_features=weight.shape[0],
        rank_row_max=rank_row_max,
        weight_bits=weight_bits,
        activation_bits=activation_bits,
    )
    purpose = f"dynamic int{activation_bits} linear, activation quantization and GEMM in one call"
    cls = choose_kernel(DYNAMIC_INT8_LINEAR_KERNELS, config, f"{label} ({purpose})" if label else purpose)
    return None if cls is QuantizerAndGemm else cls(config, weight, weight_scale)


__all__ = [
    "DYNAMIC_INT8_LINEAR_KERNELS",
    "DynamicInt8LinearConfig",
    "DynamicInt8LinearKernel",
    "Int4VnniLinear",
    "QuantizerAndGemm",
    "VllmCpuInt8ScaledMMWithQuant",
    "make_dynamic_int8_linear",
]
