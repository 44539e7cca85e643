"""Plain-torch emulations of vLLM's raw int8 CUDA ops, for testing the argument mapping on CPU.

Written from vLLM's CUDA sources (``csrc/quantization/w8a8/int8/scaled_quant.cu``,
``csrc/quantization/w8a8/cutlass/scaled_mm_entry.cu``,
``csrc/cutlass_extensions/epilogue/scaled_mm_epilogues_c3x.hpp``): the same
signatures as the ``torch.ops._C`` ops (outputs preallocated), the same
argument checks (dtypes, shapes, strides, contiguity: a mapping the real op
would reject fails here too), and the same arithmetic:

* rounding ``cvt.rni.sat``: to nearest, ties to even, saturated;
* static: ``sat8(rn(x / s))``, or with a zero point ``sat8(rn(x · fl(1/s)) + azp)``;
* dynamic: ``s = fl(max|x| / 127)``, ``q = sat8(rn(x · fl(127 / max|x|)))`` (0 for a zero row);
* GEMMs: exact int32 accumulation (``− azp_adj`` in int32 for the azp variant),
  converted to float32, ``t = fl(s_b · acc)``, ``out = fl(s_a · t + bias)``
  (one fused multiply-add) rounded to ``out``'s dtype.
"""

from __future__ import annotations

import torch

from vllm_modelslim.kernels.vllm_cuda.int8_ops import VllmInt8Ops

F64 = torch.float64
FLOAT_INPUTS = (torch.float32, torch.float16, torch.bfloat16)
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise RuntimeError(f"vLLM op check failed: {what}")


def _rn_sat8(values: torch.Tensor) -> torch.Tensor:
    return torch.round(values).clamp(-128, 127).to(torch.int8)


def static_scaled_int8_quant(out, input, scale, azp):
    _check(input.is_contiguous() and out.is_contiguous(), "input and out contiguous")
    _check(out.dtype == torch.int8 and out.shape == input.shape, "out int8 of input's shape")
    _check(input.dtype in FLOAT_INPUTS, f"input dtype {input.dtype}")
    _check(scale.numel() == 1 and scale.dtype == torch.float32, "scale: one float32")
    x = input.to(torch.float32)
    if azp is None:
        out.copy_(_rn_sat8(x / scale.reshape(())))
        return
    _check(azp.numel() == 1 and azp.dtype == torch.int32, "azp: one int32")
    inv = 1.0 / scale.reshape(())  # float32
    rounded = torch.round(x * inv).to(torch.int64)
    out.copy_((rounded + azp.reshape(()).to(torch.int64)).clamp(-128, 127).to(torch.int8))


def dynamic_scaled_int8_quant(out, input, scales, azp):
    _check(input.is_contiguous() and out.is_contiguous() and scales.is_contiguous(), "contiguous")
    _check(out.dtype == torch.int8 and out.shape == input.shape, "out int8 of input's shape")
    _check(input.dtype in FLOAT_INPUTS, f"input dtype {input.dtype}")
    _check(scales.dtype == torch.float32 and scales.numel() == input.numel() // input.shape[-1], "scales")
    _check(azp is None, "the emulation covers the symmetric op only")
    x = input.to(torch.float32).reshape(-1, input.shape[-1])
    absmax = x.abs().amax(dim=-1)
    scales.copy_((absmax / 127.0).reshape(scales.shape))
    safe = torch.where(absmax == 0, torch.ones_like(absmax), absmax)
    inv = torch.where(absmax == 0, torch.zeros_like(absmax), torch.tensor(127.0) / safe)
    out.copy_(_rn_sat8(x * inv.unsqueeze(-1)).reshape(out.shape))


def _check_gemm(out, a, b, a_scales, b_scales, bias):
    _check(a.dim() == 2 and b.dim() == 2 and out.dim() == 2, "2-D operands")
    _check(out.shape[0] == a.shape[0] and a.shape[1] == b.shape[0] and b.shape[1] == out.shape[1], "shapes")
    _check(a.dtype == torch.int8 and b.dtype == torch.int8, "int8 operands")
    _check(a.stride(1) == 1 and out.stride(1) == 1, "a and out row-major")
    _check(b.stride(0) == 1, "b column-major")
    _check(out.stride(0) % 16 == 0 and b.stride(1) % 16 == 0, "16-byte alignment (N and K multiples of 16)")
    _check(out.dtype in (torch.bfloat16, torch.float16), f"out dtype {out.dtype}")
    for name, scales, n in (("a_scales", a_scales, a.shape[0]), ("b_scales", b_scales, b.shape[1])):
        _check(scales.dtype == torch.float32 and scales.is_contiguous(), f"{name} contiguous float32")
        _check(scales.numel() in (1, n), f"{name} numel {scales.numel()} (1 or {n})")
    if bias is not None:
        _check(bias.dim() == 1 and bias.numel() == b.shape[1] and bias.is_contiguous(), "bias [N]")
        _check(bias.dtype == out.dtype, "bias dtype must match out dtype")


def _accumulate(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    acc = a.to(F64) @ b.to(F64)  # exact: |acc| < 2^53
    _check(bool((acc >= INT32_MIN).all() and (acc <= INT32_MAX).all()), "int32 accumulator range")
    return acc


def _epilogue(out, acc_int, a_scales, b_scales, bias):
    acc32 = acc_int.to(torch.float32)  # the int32 -> float32 conversion rounds above 2^24
    s_a = a_scales.reshape(-1, 1) if a_scales.numel() > 1 else a_scales.reshape(1, 1)
    t = b_scales.reshape(1, -1) * acc32  # float32
    b = bias.to(torch.float32) if bias is not None else torch.zeros(1, dtype=torch.float32)
    fused = (s_a.to(F64) * t.to(F64) + b.to(F64)).to(torch.float32)  # one fused multiply-add
    out.copy_(fused.to(out.dtype))


def cutlass_scaled_mm(out, a, b, a_scales, b_scales, bias):
    _check_gemm(out, a, b, a_scales, b_scales, bias)
    _epilogue(out, _accumulate(a, b), a_scales, b_scales, bias)


def cutlass_scaled_mm_azp(out, a, b, a_scales, b_scales, azp_adj, azp, bias):
    _check_gemm(out, a, b, a_scales, b_scales, bias)
    _check(azp_adj.dtype == torch.int32 and azp_adj.numel() == b.shape[1], "azp_adj int32 [N]")
    _check(azp_adj.is_contiguous(), "azp_adj contiguous")
    acc = _accumulate(a, b)
    if azp is not None:
        _check(azp.dtype == torch.int32 and azp.numel() == a.shape[0], "azp int32 [M]")
        acc = acc - azp.to(F64).reshape(-1, 1) * azp_adj.to(F64)
    else:
        acc = acc - azp_adj.to(F64)
    _check(bool((acc >= INT32_MIN).all() and (acc <= INT32_MAX).all()), "int32 range after azp_adj")
    _epilogue(out, acc, a_scales, b_scales, bias)


EMULATED_OPS = VllmInt8Ops(
    cutlass_scaled_mm=cutlass_scaled_mm,
    cutlass_scaled_mm_azp=cutlass_scaled_mm_azp,
    static_scaled_int8_quant=static_scaled_int8_quant,
    dynamic_scaled_int8_quant=dynamic_scaled_int8_quant,
)
"""The four ops emulated, as a :class:`VllmInt8Ops` to hand to the vLLM kernels."""
