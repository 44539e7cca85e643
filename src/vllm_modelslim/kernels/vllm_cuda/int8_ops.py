"""vLLM's int8 CUDA ops (CUTLASS scaled GEMMs, int8 activation quantization), called as raw ops.

The kernels call the raw ``torch.ops._C`` ops with preallocated outputs, not
vLLM's Python wrappers (``vllm._custom_ops.cutlass_scaled_mm`` & co.), whose
behaviour differs between versions (0.32 routes shapes that are not multiples
of 16 to a Triton GEMM, and its ``scaled_int8_quant`` has an XPU branch). The
raw schemas used here are those registered in vLLM's ``csrc/torch_bindings.cpp``
of 0.32.0 (checked against the installed CPU build's schemas) and called the
same way on the H200 with vLLM 0.26.0's library (``/work/shared/gpu``'s probe)::

    cutlass_scaled_mm(Tensor! out, Tensor a, Tensor b, Tensor a_scales, Tensor b_scales, Tensor? bias)
    cutlass_scaled_mm_azp(Tensor! out, Tensor a, Tensor b, Tensor a_scales, Tensor b_scales,
                          Tensor azp_adj, Tensor? azp, Tensor? bias)
    static_scaled_int8_quant(Tensor! out, Tensor input, Tensor scale, Tensor? azp)
    dynamic_scaled_int8_quant(Tensor! out, Tensor input, Tensor! scale, Tensor!? azp)

Their math, from vLLM's ``csrc/quantization/w8a8/int8/scaled_quant.cu`` and
``csrc/cutlass_extensions/epilogue/scaled_mm_epilogues_c3x.hpp`` (rounding is
to nearest, ties to even, then saturation to int8)::

    static, no azp:   q = sat8(rn(x / scale))
    static, azp:      q = sat8(rn(x · (1/scale)) + azp)          (fp32; the zero point added after rounding)
    dynamic:          s[m] = max_k |x[m, k]| / 127,  q = sat8(rn(x · (127 / max_k |x[m, k]|)))
                      (q = 0 and s = 0 for a zero row)
    scaled_mm:        out = s_a · (s_b · float(a·b)) + bias       (fp32, then rounded to out's dtype)
    scaled_mm_azp:    out = s_a · (s_b · float(a·b − azp_adj)) + bias   (the subtraction in int32)

``out`` is bf16 or fp16 only; ``b`` is ``[K, N]`` column-major (an ``[N, K]``
row-major weight's ``.t()``); ``bias`` has ``out``'s dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from vllm_modelslim.kernels.vllm_cuda.ops import vllm_cuda_op, vllm_cuda_unavailable_reason

INT8_OP_NAMES = (
    "cutlass_scaled_mm",
    "cutlass_scaled_mm_azp",
    "static_scaled_int8_quant",
    "dynamic_scaled_int8_quant",
)
"""The raw ops a :class:`VllmInt8Ops` holds."""

CUTLASS_INT8_MIN_CAPABILITY = 75
"""vLLM compiles CUTLASS int8 GEMMs for sm75 (Turing) and up (``scaled_mm_entry.cu``)."""

CUTLASS_ALIGNMENT = 16
"""K and N must be multiples of 16 (16-byte aligned int8 rows of ``b``, as vLLM's wrapper asserts)."""

CUTLASS_OUT_DTYPES = (torch.bfloat16, torch.float16)
"""Output dtypes of vLLM's CUTLASS scaled GEMMs."""


@dataclass(frozen=True)
class VllmInt8Ops:
    """The four raw ops, with the raw signatures in the module docstring.

    The seam of the vLLM kernels: :meth:`from_vllm` gives the real ops; tests
    on CPU construct one from plain-torch emulations of the same signatures.
    """

    cutlass_scaled_mm: Callable[..., Any]
    cutlass_scaled_mm_azp: Callable[..., Any]
    static_scaled_int8_quant: Callable[..., Any]
    dynamic_scaled_int8_quant: Callable[..., Any]

    @classmethod
    def from_vllm(cls) -> VllmInt8Ops:
        """The registered ops (see :func:`~vllm_modelslim.kernels.vllm_cuda.ops.vllm_cuda_op`).

        Raises:
            RuntimeError: one of them cannot run here (the message says why).
        """
        reason = int8_ops_unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"vLLM's int8 CUDA ops cannot run: {reason}")
        return cls(**{name: vllm_cuda_op(name) for name in INT8_OP_NAMES})


def int8_ops_unavailable_reason() -> str | None:
    """Why vLLM's int8 CUDA ops cannot run here (no CUDA, capability < 7.5, ops missing), or None."""
    return vllm_cuda_unavailable_reason(*INT8_OP_NAMES, min_capability=CUTLASS_INT8_MIN_CAPABILITY)


def quantize_static(
    ops: VllmInt8Ops, x: torch.Tensor, scale: torch.Tensor, azp: torch.Tensor | None
) -> torch.Tensor:
    """``static_scaled_int8_quant``: int8 ``[M, K]`` from ``x`` ``[M, K]`` (fp16/bf16/fp32).

    ``scale`` float32 ``[1]``; ``azp`` int32 ``[1]`` or None (symmetric).
    """
    x = x.contiguous()
    out = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    ops.static_scaled_int8_quant(out, x, scale, azp)
    return out


def quantize_dynamic(ops: VllmInt8Ops, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``dynamic_scaled_int8_quant``: ``(q int8 [M, K], s float32 [M, 1])`` from ``x`` ``[M, K]``."""
    x = x.contiguous()
    out = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    scales = torch.empty((x.shape[0], 1), dtype=torch.float32, device=x.device)
    ops.dynamic_scaled_int8_quant(out, x, scales, None)
    return out, scales


def scaled_mm(
    ops: VllmInt8Ops,
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    out_dtype: torch.dtype,
    bias: torch.Tensor | None = None,
    azp_adj: torch.Tensor | None = None,
) -> torch.Tensor:
    """``cutlass_scaled_mm`` (or ``cutlass_scaled_mm_azp`` when ``azp_adj`` is given) into a new ``[M, N]``.

    Args:
        a: int8 ``[M, K]`` row-major. b: int8 ``[K, N]`` column-major.
        scale_a: float32 ``[M, 1]`` or ``[1]``. scale_b: float32 ``[N]`` or ``[1]``.
        out_dtype: bf16 or fp16.
        bias: ``[N]`` in ``out_dtype``, or None.
        azp_adj: int32 ``[N]`` subtracted from the accumulator (per-tensor zero-point term), or None.
    """
    out = torch.empty((a.shape[0], b.shape[1]), dtype=out_dtype, device=a.device)
    if azp_adj is None:
        ops.cutlass_scaled_mm(out, a, b, scale_a, scale_b, bias)
    else:
        ops.cutlass_scaled_mm_azp(out, a, b, scale_a, scale_b, azp_adj, None, bias)
    return out
