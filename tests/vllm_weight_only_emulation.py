"""Plain-torch emulation of vLLM's Machete / Marlin weight-only GEMMs from this project's layouts.

Used by the CPU mapping tests (``tests/unit/test_vllm_cuda_weight_only_mapping.py``)
and compared with the real ops by the GPU tests (``tests/gpu/test_vllm_cuda_weight_only.py``).
The arithmetic, from vLLM's kernels: the stored unsigned value minus the bias
or integer zero point (Marlin), or times the scale plus the pre-scaled zero
point (Machete), gives the weight, rounded to the activation dtype; products
accumulate in float32; the output is rounded to the activation dtype.
"""

from __future__ import annotations

import torch

from vllm_modelslim.kernels.vllm_cuda import gptq_layout
from vllm_modelslim.kernels.weight_only import VllmMarlinWeightOnly

F64 = torch.float64


def quantized_layer(n, k, group, bits, zero_points, seed=0):
    """Canonical q int8 [N, K], scales and zero points float32 [N, G] (scales exact in bf16 and fp16).

    ``zero_points``: "none", "integer" (asymmetric: z integer, q − z spans the full range) or "float".
    """
    g = torch.Generator().manual_seed(seed)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    groups = k // group
    scale = (torch.rand(n, groups, generator=g) * 0.02 + 0.002).to(torch.bfloat16).float()
    q = torch.randint(lo, hi + 1, (n, k), generator=g, dtype=torch.int8)
    if zero_points == "none":
        return q, scale, None
    if zero_points == "integer":
        zp = torch.randint(lo, hi + 1, (n, groups), generator=g).float()
    else:
        zp = torch.rand(n, groups, generator=g) * (hi - lo) + lo + 0.37
    return q, scale, zp


def layout_weight(kernel, layout, bits, n, k):
    """The weight ``[N, K]`` (float64) that a layout encodes, read back as each kernel's op reads it."""
    bias = gptq_layout.unsigned_bias(bits)
    u = gptq_layout.gptq_unpack_weight(layout.words, bits).to(F64) + bias  # stored unsigned [N, K]
    groups = layout.scales.shape[0]
    if kernel is VllmMarlinWeightOnly:
        scales = gptq_layout.marlin_unpermute_scales(layout.scales, per_group=layout.group_size != -1)
        if layout.zeros.numel():
            zeros = gptq_layout.marlin_unpack_zero_points(layout.zeros).to(F64)
        else:
            zeros = torch.full((groups, n), float(bias), dtype=F64)
        per_k = lambda t: t.to(F64).T.repeat_interleave(k // groups, dim=1)  # noqa: E731
        return (u - per_k(zeros)) * per_k(scales)
    per_k = lambda t: t.to(F64).T.repeat_interleave(k // groups, dim=1)  # noqa: E731
    if layout.zeros is None:
        return (u - bias) * per_k(layout.scales)
    return u * per_k(layout.scales) + per_k(layout.zeros)


def emulate(kernel, layout, bits, x):
    """The kernel's math in plain torch: weight rounded to ``x.dtype``, fp32 GEMM, output rounded."""
    n, k = layout.words.shape[1], x.shape[1]
    w = layout_weight(kernel, layout, bits, n, k).to(x.dtype)
    return (x.float() @ w.float().T).to(x.dtype)


def relative_error(got, want):
    return float((got.to(F64) - want.to(F64)).norm() / want.to(F64).norm())
