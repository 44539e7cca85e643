"""CPU weight-only int4 kernel on ``aten._weight_int4pack_mm_for_cpu``.

torch's CPU int4 kernel computes ``W = (u − 8)·scale + zero`` from unsigned
nibbles ``u`` packed by ``aten._convert_weight_to_int4pack_for_cpu``, with
``scale`` and ``zero`` per (K-group, output channel) in the activation dtype.
With ``u = q + 8`` and ``zero = −z·s`` that is ModelSlim's ``(q − z)·s``; the
scales and zero points are rounded to the activation dtype (bf16: 8 bits), an
error of the same order as bf16 activations. The op needs N % 16 == 0 and a
group size of 32, 64, 128 or 256 (measured on torch 2.13 CPU). Measured at
K = N = 4096, g = 128, 2 threads: see ``benchmarks/kernels.py``.
"""

from __future__ import annotations

import torch

from vllm_modelslim.kernels.weight_only_int4.base import WeightOnlyInt4Config, WeightOnlyInt4Kernel

_GROUP_SIZES = (32, 64, 128, 256)
_N_MULTIPLE = 16


class CpuInt4PackWeightOnlyInt4(WeightOnlyInt4Kernel):
    """``aten._weight_int4pack_mm_for_cpu`` kernel (CPU)."""

    name = "cpu_int4pack"

    @classmethod
    def is_supported(cls, device_type: str) -> tuple[bool, str | None]:
        if device_type != "cpu":
            return False, "aten._weight_int4pack_mm_for_cpu is a CPU kernel"
        if not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
            return False, "this torch build lacks aten._weight_int4pack_mm_for_cpu"
        return True, None

    @classmethod
    def can_implement(cls, config: WeightOnlyInt4Config) -> tuple[bool, str | None]:
        if config.group_size not in _GROUP_SIZES:
            return False, f"group size {config.group_size} not in {_GROUP_SIZES}"
        if config.out_features % _N_MULTIPLE:
            return False, f"N = {config.out_features} is not a multiple of {_N_MULTIPLE}"
        if config.act_dtype not in (torch.bfloat16, torch.float16, torch.float32):
            return False, f"no {config.act_dtype} activations"
        return True, None

    def __init__(self, config, weight, weight_scale, zero_point):
        super().__init__(config, weight, weight_scale, zero_point)
        unsigned = (self.weight.to(torch.int32) + 8).contiguous()
        self.weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(unsigned, 1)
        zeros = (
            torch.zeros_like(self.weight_scale)
            if zero_point is None
            else -self.zero_point * self.weight_scale
        )
        scale_and_zeros = torch.stack((self.weight_scale.T, zeros.T), dim=-1)
        self.register_buffer(
            "scale_and_zeros", scale_and_zeros.to(config.act_dtype).contiguous(), persistent=False
        )

    def forward(self, x, bias):  # noqa: D102
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x.contiguous(), self.weight, self.config.group_size, self.scale_and_zeros
        )
        return y if bias is None else y + bias.to(y.dtype)
