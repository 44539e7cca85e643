"""Which CPU kernel runs a compressed-tensors linear layer: this project's or vLLM's own.

Read by the adapters' ``is_supported`` / ``can_implement`` when vLLM picks each
layer's kernel; imports nothing of this package (the adapters and the
registration both depend on it).
"""

from __future__ import annotations

import os

import torch

from vllm_modelslim.kernels.platform import cpu_has_amx_tiles, cpu_has_int8_dot

KERNELS_ENV = "VLLM_MODELSLIM_CT_KERNELS"
"""Which CPU kernels vLLM's compressed-tensors linear schemes run (read when each layer picks its kernel):

* ``auto`` (default): vLLM's own int8 kernel where :func:`vllm_cpu_int8_path`
  finds it exact for the layer and its activation dtype, this project's
  elsewhere; this project's for weight-only layers (measured faster than
  vLLM's ``cpu_gemm_wna16``);
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
