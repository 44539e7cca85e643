"""int8 × int8 GEMM with exact int32 accumulation: interface, kernels, selection."""

from __future__ import annotations

import torch

from vllm_modelslim.kernels.scaled_int8_mm.base import (
    ScaledInt8MMConfig,
    ScaledInt8MMKernel,
    int_bias_zero_point,
)
from vllm_modelslim.kernels.scaled_int8_mm.cpu_int8_vnni import CpuInt8VnniScaledInt8MM
from vllm_modelslim.kernels.scaled_int8_mm.reference import (
    ReferenceScaledInt8MM,
    scaled_int8_mm_reference,
)
from vllm_modelslim.kernels.scaled_int8_mm.torch_int_mm import TorchIntMMScaledInt8MM
from vllm_modelslim.kernels.scaled_int8_mm.vllm_cutlass import VllmCutlassScaledInt8MM
from vllm_modelslim.kernels.scaled_int8_mm.vllm_onednn import VllmOnednnScaledInt8MM
from vllm_modelslim.kernels.scaled_int8_mm.vllm_onednn_static import VllmOnednnStaticScaledInt8MM
from vllm_modelslim.kernels.scaled_int8_mm.vllm_wna16_int8_act import VllmWna16Int8ActScaledInt8MM
from vllm_modelslim.kernels.selection import choose_kernel, priority_list

SCALED_INT8_MM_KERNELS: list[type[ScaledInt8MMKernel]] = priority_list(
    VllmCutlassScaledInt8MM,
    VllmWna16Int8ActScaledInt8MM,
    CpuInt8VnniScaledInt8MM,
    VllmOnednnStaticScaledInt8MM,
    VllmOnednnScaledInt8MM,
    TorchIntMMScaledInt8MM,
    ReferenceScaledInt8MM,
)
"""Priority order; the reference kernel always qualifies."""


def make_scaled_int8_mm(
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    int_bias: torch.Tensor | None = None,
    kernel: type[ScaledInt8MMKernel] | None = None,
    label: str | None = None,
    out_dtype: torch.dtype | None = None,
) -> ScaledInt8MMKernel:
    """Build the best kernel for an int8 (or int4-valued) weight ``[N, K]``.

    Args:
        weight: int8 ``[N, K]``.
        weight_scale: per-output-channel scale ``[N]`` or ``[N, 1]`` (``s_w``,
            or ``deq_scale``), or per-group ``[N, G]`` with ``G > 1`` dividing K.
        int_bias: optional int32 ``[N]`` added to the accumulator (per-channel only).
        kernel: force a kernel class instead of selecting one.
        label: what the layer is (e.g. a scheme's quant type), for the selection log line.
        out_dtype: the dtype the layer's forward will ask for (kernels that write
            only bf16/fp16, such as ``vllm_cutlass``, are chosen only when it is given).

    Raises:
        ValueError: the scale groups do not divide K, or ``VLLM_MODELSLIM_DISABLED_KERNELS`` is invalid.
        RuntimeError: a forced ``kernel`` cannot run this shape on this device.
    """
    in_features = weight.shape[1]
    groups = weight_scale.shape[1] if weight_scale.dim() == 2 else 1
    if in_features % groups:
        raise ValueError(f"{groups} weight-scale groups do not divide K = {in_features}")
    config = ScaledInt8MMConfig(
        in_features=in_features,
        out_features=weight.shape[0],
        device_type=weight.device.type,
        group_size=in_features // groups if groups > 1 else 0,
        has_int_bias=int_bias is not None,
        out_dtype=out_dtype,
        int_bias_zero_point=None if int_bias is None else int_bias_zero_point(weight, int_bias),
    )
    scales = "per-group" if config.group_size else "per-channel"
    purpose = f"scaled int8 GEMM, {scales} scales" + (", int32 bias" if int_bias is not None else "")
    cls = choose_kernel(
        SCALED_INT8_MM_KERNELS, config, f"{label} ({purpose})" if label else purpose, forced=kernel
    )
    return cls(config, weight, weight_scale, int_bias)


__all__ = [
    "SCALED_INT8_MM_KERNELS",
    "CpuInt8VnniScaledInt8MM",
    "ReferenceScaledInt8MM",
    "ScaledInt8MMConfig",
    "ScaledInt8MMKernel",
    "TorchIntMMScaledInt8MM",
    "VllmCutlassScaledInt8MM",
    "VllmOnednnScaledInt8MM",
    "VllmOnednnStaticScaledInt8MM",
    "VllmWna16Int8ActScaledInt8MM",
    "int_bias_zero_point",
    "make_scaled_int8_mm",
    "scaled_int8_mm_reference",
]
