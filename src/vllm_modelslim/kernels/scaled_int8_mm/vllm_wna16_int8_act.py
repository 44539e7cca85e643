"""Per-group int8 × int4 GEMM (W4A8_DYNAMIC per-group) on vLLM's weight-only CUDA kernels.

vLLM has no CUDA GEMM for int8 activations with per-group int4 weight scales
that keeps ModelSlim's math (Marlin's W4A8-INT8 mode rounds the group scales
to 1/4096 of the largest one; CUTLASS/Machete int8 paths are per-channel).
This kernel therefore runs the layer on a weight-only kernel
(:class:`~vllm_modelslim.kernels.weight_only.VllmMacheteWeightOnly` on sm90,
else :class:`~vllm_modelslim.kernels.weight_only.VllmMarlinWeightOnly`) fed
the integer activations themselves, which bf16 holds exactly (|x_q| ≤ 128)::

    y'[m, n] = Σ_j bf16(s_w[n, j]) · Σ_{k in group j} x_q[m, k] · w_q[n, k]   (the kernel, bf16 out)
    y[m, n]  = y'[m, n] · s_x[m] + b[n]                                      (float32, then out dtype)

Compared with the exact integer sums of the reference, the weight scales
(times ``w_q``) are rounded to bf16 and ``y'`` is rounded to bf16 once;
bf16 rather than fp16 even for fp16 models, as ``y' = y / s_x`` can exceed
fp16's range. The weight keeps 4 bits when its values lie in [−8, 7]
(checked at load), else 8. Per-channel layers go to the int8 GEMMs.

Not run on a GPU yet: the mapping is emulated on CPU
(``tests/unit/test_vllm_cuda_weight_only_mapping.py``).
"""

from __future__ import annotations

import torch

from vllm_modelslim.kernels.int4_packing import INT4_MAX, INT4_MIN
from vllm_modelslim.kernels.scaled_int8_mm.base import ScaledInt8MMConfig, ScaledInt8MMKernel
from vllm_modelslim.kernels.weight_only.base import WeightOnlyConfig
from vllm_modelslim.kernels.weight_only.vllm_gptq import VllmGptqWeightOnly
from vllm_modelslim.kernels.weight_only.vllm_machete import VllmMacheteWeightOnly
from vllm_modelslim.kernels.weight_only.vllm_marlin import VllmMarlinWeightOnly

INNER_KERNELS: tuple[type[VllmGptqWeightOnly], ...] = (VllmMacheteWeightOnly, VllmMarlinWeightOnly)
"""The weight-only kernels tried, in order."""

INNER_DTYPE = torch.bfloat16
"""Activation dtype of the inner kernel (exact for int8 values, fp32's range)."""


def inner_config(config: ScaledInt8MMConfig, bits: int) -> WeightOnlyConfig:
    """The weight-only description of a per-group int8 GEMM layer (no zero points, bf16 activations)."""
    return WeightOnlyConfig(
        in_features=config.in_features,
        out_features=config.out_features,
        group_size=config.group_size,
        act_dtype=INNER_DTYPE,
        bits=bits,
        device_type=config.device_type,
    )


def _inner_kernel(config: ScaledInt8MMConfig, bits: int) -> tuple[type[VllmGptqWeightOnly] | None, str]:
    reasons = []
    for kernel in INNER_KERNELS:
        ok, why = kernel.is_supported(config.device_type)
        if ok:
            ok, why = kernel.can_implement(inner_config(config, bits))
        if ok:
            return kernel, ""
        reasons.append(f"{kernel.name}: {why}")
    return None, "; ".join(reasons)


class VllmWna16Int8ActScaledInt8MM(ScaledInt8MMKernel):
    """Per-group scaled int8 GEMM as a CUDA weight-only GEMM of the integer activations."""

    name = "vllm_wna16_int8_act"
    device_types = frozenset({"cuda"})
    copies_weight = True

    @classmethod
    def is_supported(cls, device_type: str) -> tuple[bool, str | None]:
        if device_type != "cuda":
            return False, "runs vLLM's CUDA weight-only kernels"
        reasons = []
        for kernel in INNER_KERNELS:
            ok, why = kernel.is_supported(device_type)
            if ok:
                return True, None
            reasons.append(f"{kernel.name}: {why}")
        return False, "; ".join(reasons)

    @classmethod
    def can_implement(cls, config: ScaledInt8MMConfig) -> tuple[bool, str | None]:
        if not config.group_size:
            return False, "per-channel scales go to the int8 GEMMs"
        if config.has_int_bias:
            return False, "no int32 bias"
        for bits in (4, 8):  # the width is known only once the values are
            kernel, why = _inner_kernel(config, bits)
            if kernel is None:
                return False, why
        return True, None

    def __init__(self, config, weight, weight_scale, int_bias=None):
        super().__init__(config, weight, weight_scale, int_bias)
        w = self.weight
        bits = 4 if w.numel() == 0 or (int(w.min()) >= INT4_MIN and int(w.max()) <= INT4_MAX) else 8
        kernel, why = _inner_kernel(config, bits)
        if kernel is None:
            raise RuntimeError(f"{self.name} cannot run {config}: {why}")
        self.inner = kernel(inner_config(config, bits), w, self.weight_scale, None)
        self.weight = None
        self.weight_scale = None

    def forward(self, x_q, x_scale, bias, out_dtype):  # noqa: D102
        y = self.inner(x_q.to(INNER_DTYPE), None).to(torch.float32)
        return self.group_epilogue(y, x_scale, bias, out_dtype)
