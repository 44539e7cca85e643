"""CPU weight-only int8 kernel for few rows on AVX-512: the project's ``int8_weight_linear`` op (C++).

``kernels/csrc/int8_weight_linear.cpp``, built on first use
(:mod:`~vllm_modelslim.kernels.cpp_extension`): each activation (bf16 or
float32) times its int8 weight is formed and summed in float32 in registers,
16 lanes at a time, and the epilogue ``(acc − z·Σ_k x)·s + b`` is float32 in
the same call, rounded once to the output dtype; the weight stays int8
``[N, K]``, so a decode step reads one byte per weight. ``torch``'s
``_weight_int8pack_mm`` (what :class:`Int8PackWeightOnlyInt8` runs for few
rows) rounds ``x·qᵀ`` to bf16 before the epilogue, which runs as separate
eager ops; this op does neither, and it takes float32 activations too
(``_weight_int8pack_mm`` is slow for them). For many rows the kernel keeps
:class:`Int8PackWeightOnlyInt8`'s block GEMM. Needs AVX512F/BW/DQ/VL (no VNNI
or BF16 instructions) and per-channel scales.

Measured on a 2-core AMD EPYC (AVX512, 2 threads, K = 2048, N = 6144, 24
weight copies cycled so that they come from memory): 0.70 ms at M = 1 against
0.77 ms for the int8pack path and 1.17 ms for vLLM's bf16 oneDNN GEMM; 0.80 /
1.20 / 1.67 ms at M = 2 / 4 / 8 against 0.93 / 1.29 / 2.18 ms. The int8 →
float32 conversion (two instructions per 16 weights) bounds it, not memory:
a W8A16 decode step does not reach the speed its halved bytes would allow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vllm_modelslim.kernels.cpp_extension import CompiledCpuOpsMixin, load_cpu_ops, require_cpu_ops
from vllm_modelslim.kernels.row_dispatch import MANY_ROWS_FROM
from vllm_modelslim.kernels.weight_only.base import WeightOnlyConfig
from vllm_modelslim.kernels.weight_only.int8pack import Int8PackWeightOnlyInt8

SOURCE = "int8_weight_linear.cpp"
CPU_FLAGS = ("avx512f", "avx512bw", "avx512dq", "avx512vl")
"""x86 flags the compiled code executes."""
COMPILER_FLAGS = ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq")
BF16_MANY_ROWS_FROM = 24
"""Smallest M of the bf16 block GEMM path: the measured crossover with this op (AVX512-BF16 host,
2 threads, K = 2048, N = 6144: op 3.4 / 4.8 / 6.2 ms, bf16 blocks 4.5 / 4.7 / 5.9 ms at M = 16 / 24 / 32)."""


def _fake(x, weight, scale, zero_point, bias):
    """Shape of ``int8_weight_linear(x [M, K], weight int8 [N, K], scale, zero_point, bias)``: ``[M, N]``."""
    return x.new_empty((x.shape[0], weight.shape[0]))


def ops_unavailable() -> str | None:
    """Why the op cannot be built or loaded here, or None once it is registered (cached per process)."""
    return load_cpu_ops(SOURCE, COMPILER_FLAGS, {"vllm_modelslim::int8_weight_linear": _fake})


class Avx512WeightOnlyInt8(CompiledCpuOpsMixin, Int8PackWeightOnlyInt8):
    """The project's ``int8_weight_linear`` (few rows), :class:`Int8PackWeightOnlyInt8`'s block GEMM (many).

    bf16 or float32 activations, per-channel scales and zero points kept as ``[N]`` float32.
    """

    name = "cpu_int8_avx512"
    cpu_flags = CPU_FLAGS
    ops_unavailable = staticmethod(ops_unavailable)

    @classmethod
    def can_implement(cls, config: WeightOnlyConfig) -> tuple[bool, str | None]:
        if config.bits != 8 or not config.per_channel:
            return False, "per-channel int8 weights only"
        if config.act_dtype not in (torch.bfloat16, torch.float32):
            return False, f"bf16 or float32 activations only, not {config.act_dtype}"
        return cls.ops_reason()

    def __init__(self, config, weight, weight_scale, zero_point):
        require_cpu_ops(self.ops_unavailable())
        super().__init__(config, weight, weight_scale, zero_point)
        self.unit_scale = None  # the int8pack op's unit scale: this op takes the real one
        bf16_blocks = self.many_rows_dtype == torch.bfloat16
        self.many_rows_from = BF16_MANY_ROWS_FROM if bf16_blocks else MANY_ROWS_FROM

    def forward_few_rows(self, x, bias):  # noqa: D102
        x_padded = F.pad(x, (0, self.k_pad)) if self.k_pad else x
        return torch.ops.vllm_modelslim.int8_weight_linear(
            x_padded.contiguous(),
            self.weight,
            self.weight_scale,
            self.zero_point,
            None if bias is None else bias.to(torch.float32).contiguous(),
        )
