"""Hook this project into vLLM's compressed-tensors path: kernel lists and the config class.

Kernels: put this project's linear kernels first in vLLM's CPU kernel lists.

vLLM's documented hook ``register_linear_kernel`` appends a kernel to a
platform's list, which would leave vLLM's own CPU kernels in front; the
adapters are then moved to the front of that list. This module is the only
place that touches vLLM's kernel lists (``tests/unit/test_compressed_tensors_kernels.py``
fails if their names or structure change).
"""

from __future__ import annotations

import os

import torch

from vllm_modelslim.kernels.platform import cpu_has_amx_tiles, cpu_has_int8_dot

KERNELS_ENV = "VLLM_MODELSLIM_CT_KERNELS"
"""Which CPU kernels vLLM's compressed-tensors linear schemes run (read when each layer picks its kernel):

* ``auto`` (default): this project's only where vLLM's own CPU kernel is
  missing or inexact (int8: no VNNI/AMX int8 dot products; int4/int8
  weight-only: no ``cpu_gemm_wna16`` op or a shape it cannot run);
* ``always``: this project's wherever they can run (to compare, and in tests);
* ``never``: vLLM's own (vLLM's default path; MoE experts then have no CPU method).
"""
KERNEL_MODES = ("auto", "always", "never")


def vllm_cpu_op(name: str) -> bool:
    """Whether vLLM's compiled CPU extension has the op ``torch.ops._C.<name>``."""
    try:
        import vllm._custom_ops  # noqa: F401  (loads vLLM's compiled ops)
    except ImportError:
        return False
    return hasattr(torch.ops._C, name)


def vllm_cpu_int8_path(
    is_static_input_scheme: bool, input_symmetric: bool, activation_dtype: torch.dtype
) -> tuple[bool, str]:
    """Whether vLLM's own CPU int8 kernel (``CPUInt8ScaledMMLinearKernel``) runs this layer exactly.

    vLLM-CPU 0.32 has two paths inside that kernel (``scaled_mm/cpu.py``):

    * **SGL** (x86 with AMX tiles, symmetric activations, ``N % 16 == 0`` and
      ``K % 32 == 0``): ``int8_scaled_mm_with_quant`` quantizes the activations
      per token itself, so a static input scale is ignored, and it accepts only
      bf16/fp16 activations (float32 raises at the first forward);
    * **oneDNN** (everything else): exact int32 accumulation only with native
      int8 dot products (VNNI/AMX); without them it loses precision.

    The shape test of the SGL path is not known when a kernel is chosen, so
    any layer that *may* take it is judged by the SGL rules.

    Args:
        is_static_input_scheme: per-tensor static activation scale (and zero point).
        input_symmetric: no activation zero point.
        activation_dtype: the model dtype the layer's activations arrive in.

    Returns:
        ``(exact, reason)``: whether vLLM's kernel computes this layer exactly
        with these activations, and why (or why not).
    """
    if not (cpu_has_int8_dot() and vllm_cpu_op("onednn_scaled_mm")):
        return False, "vLLM's oneDNN int8 GEMM is inexact on this CPU (no VNNI/AMX int8 dot products)"
    if input_symmetric and cpu_has_amx_tiles():
        if is_static_input_scheme:
            return False, "vLLM's AMX (SGL) int8 path quantizes per token, ignoring the static input scale"
        if activation_dtype not in (torch.bfloat16, torch.float16):
            return False, f"vLLM's AMX (SGL) int8 path takes bf16/fp16 only, not {activation_dtype}"
        return True, "vLLM's AMX (SGL) int8 path is exact for per-token bf16/fp16 activations"
    return True, "vLLM's oneDNN int8 GEMM is exact on this CPU (VNNI/AMX int8 dot products)"


def kernel_mode() -> str:
    """The :data:`KERNELS_ENV` setting.

    Raises:
        ValueError: a value other than :data:`KERNEL_MODES`.
    """
    mode = os.environ.get(KERNELS_ENV, "auto").strip().lower()
    if mode not in KERNEL_MODES:
        raise ValueError(f"{KERNELS_ENV}={mode!r}: expected one of {', '.join(KERNEL_MODES)}")
    return mode


def register_cpu_linear_kernels() -> None:
    """Put this project's int8 and mixed-precision linear kernels first in vLLM's CPU lists.

    Idempotent. Whether they then run is decided per layer by their
    ``is_supported`` / ``can_implement`` (:func:`kernel_mode`).
    """
    import vllm.model_executor.kernels.linear as linear_kernels
    from vllm.platforms import PlatformEnum

    from vllm_modelslim.compressed_tensors.int8_linear_kernel import ModelSlimInt8ScaledMMLinearKernel
    from vllm_modelslim.compressed_tensors.wna16_linear_kernel import ModelSlimWNA16LinearKernel

    for kernel, kind, table in (
        (ModelSlimInt8ScaledMMLinearKernel, "int8", linear_kernels._POSSIBLE_INT8_KERNELS),
        (ModelSlimWNA16LinearKernel, "mp", linear_kernels._POSSIBLE_KERNELS),
    ):
        cpu_kernels = table.get(PlatformEnum.CPU, [])
        if kernel not in cpu_kernels:
            linear_kernels.register_linear_kernel(kernel, PlatformEnum.CPU, kind)
        cpu_kernels = table[PlatformEnum.CPU]
        cpu_kernels.remove(kernel)
        cpu_kernels.insert(0, kernel)


def register_compressed_tensors_config() -> None:
    """Register :class:`CompressedTensorsCpuConfig` under vLLM's name ``compressed-tensors``.

    vLLM's ``register_quantization_config`` lets a plugin replace a built-in
    method; detection from config.json is unchanged.
    """
    from vllm.model_executor.layers.quantization import register_quantization_config

    from vllm_modelslim.compressed_tensors.config import VLLM_NAME, CompressedTensorsCpuConfig

    register_quantization_config(VLLM_NAME)(CompressedTensorsCpuConfig)
