"""CPU weight-only int8 kernel on AVX-512 VNNI: the project's ``int8_weight_vnni_linear`` (C++).

``kernels/csrc/int8_weight_vnni_linear.cpp``, built on first use
(:mod:`~vllm_modelslim.kernels.cpp_extension`). For few rows each activation
row is written exactly as four signed 7-bit integer limbs below its largest
power of two, and each limb is multiplied with the int8 weight by VNNI
``vpdpbusd`` in exact int32 sums: the weight bytes are never converted to
float, which is what bounds :class:`~.avx512_int8.Avx512WeightOnlyInt8` (two
conversion instructions per 16 weights). Exactness: an activation whose lowest
bit is at or above ``2^(E−27)`` (``2^E ≤ max |x| < 2^(E+1)`` of its row; every
bf16 value within ``2^−20`` of the row maximum) is represented exactly,
smaller ones to within ``2^(E−28)``; the four sums are added in float32 and the
epilogue ``(Σ − z·Σ_k x)·s + b`` is float32, rounded once. For many rows on
an AVX512-BF16 CPU without AMX (:func:`~vllm_modelslim.kernels.float_gemm.panel_gemm_preferred`),
``int8_weight_bf16_gemm``
(``kernels/csrc/int8_weight_bf16_gemm.cpp``) writes ``w_q`` (exact in bf16)
64 channels × 512 k at a time into a panel in cache and multiplies every row
with it by ``vdpbf16ps`` (``kernels/csrc/bf16_panel_gemm.h``; float32 sums and
epilogue, one rounding); elsewhere (AMX CPUs, CPUs without AVX512-BF16)
``int8_weight_vnni_unpack`` writes ``w_q`` block by block for the inherited
block GEMM (bf16 where the CPU has native bf16, else float32) and epilogue.

The weight is kept only in the op's layout, uint8 ``[N/16, K/4, 64]`` of
``q + 128`` (one byte per weight). bf16 activations (float32 layers keep
:class:`~.avx512_int8.Avx512WeightOnlyInt8`: their 24-bit mantissas would
need more limbs to stay as exact), per-channel scales, N % 16 == 0 (K is
padded to a multiple of 16 as for the int8pack kernel); needs AVX512F/BW/VL/DQ
and AVX512-VNNI.

Measured on a 2-core AMD EPYC (AVX512-VNNI and AVX512-BF16, no AMX; 2
threads, K = 2048, N = 6144, bf16, 6 weight copies cycled so that they come
from memory; the host's bandwidth varies between runs): M = 1, 0.41–0.43 ms
(0.14 ms with the weight in cache) against 0.64 ms (0.28) for
:class:`~.avx512_int8.Avx512WeightOnlyInt8`; M = 4 / 8 / 24, 0.78 / 1.35 /
3.24 ms against 0.81 / 1.59 / 4.02 ms. The limbs are stored per 4-k block
(their four operands one 16-byte read): stored per limb, the op was slower
than the float path from M = 4 on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vllm_modelslim.kernels import platform as cpu_platform
from vllm_modelslim.kernels.cpp_extension import load_cpu_ops
from vllm_modelslim.kernels.float_gemm import panel_gemm_preferred
from vllm_modelslim.kernels.scaled_int8_mm.cpu_int8_vnni import TILE_N, pack_int8_vnni
from vllm_modelslim.kernels.weight_only.avx512_int8 import Avx512WeightOnlyInt8
from vllm_modelslim.kernels.weight_only.base import WeightOnlyConfig

SOURCE = "int8_weight_vnni_linear.cpp"
CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni")
"""x86 flags the compiled code executes."""
COMPILER_FLAGS = ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni")
MANY_ROWS_FROM = 40
"""Smallest M of the many-rows path (measured crossover of the unpack + block GEMM path on a 2-core AMD
EPYC with AVX512-VNNI and AVX512-BF16, 2 threads, K = 2048, N = 6144: op 4.4 / 6.3 ms, blocks 4.5 /
5.4 ms at M = 32 / 48)."""
BF16_GEMM_SOURCE = "int8_weight_bf16_gemm.cpp"
BF16_GEMM_CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_bf16")
BF16_GEMM_COMPILER_FLAGS = ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16")
BF16_GEMM_MANY_ROWS_FROM = 12
"""Smallest M of ``int8_weight_bf16_gemm``: the measured crossover with the few-rows op (same host,
2 threads; K = 2048 / N = 6144 and K = 6144 / N = 2048: op 1.06 / 1.10 ms, panel GEMM 1.49 / 1.55 ms
at M = 8; op 1.65 / 2.11 ms, panel GEMM 1.64 / 1.91 ms at M = 12)."""


def _linear_fake(x, weight, scale, zero_point, bias):
    """Shape of ``int8_weight_vnni_linear(x [M, K], weight uint8 [N/16, K/4, 64], ...)``: ``[M, N]``."""
    return x.new_empty((x.shape[0], weight.shape[0] * TILE_N))


def _unpack_fake(weight, col_start, col_stop, out):
    """``int8_weight_vnni_unpack`` writes ``out`` in place and returns nothing."""


def _moe_fake(x, w13, w13_scale, w13_zero, w2, w2_scale, w2_zero, topk_weights, topk_ids):
    """Shape of ``int8_weight_vnni_moe(x [T, H], ...)``: ``[T, H]`` in x's dtype."""
    return torch.empty_like(x)


def _bf16_gemm_fake(x, weight, scale, zero_point, bias):
    """Shape of ``int8_weight_bf16_gemm(x [M, K], weight uint8 [N/16, K/4, 64], ...)``: bf16 ``[M, N]``."""
    return x.new_empty((x.shape[0], weight.shape[0] * TILE_N))


def bf16_gemm_unavailable() -> str | None:
    """Why ``int8_weight_bf16_gemm`` cannot run here (no AVX512-BF16, no build), or None once registered."""
    missing = [flag for flag in BF16_GEMM_CPU_FLAGS if flag not in cpu_platform.cpu_flags()]
    if missing:
        return f"the CPU lacks {', '.join(missing)}"
    fakes = {"vllm_modelslim::int8_weight_bf16_gemm": _bf16_gemm_fake}
    return load_cpu_ops(BF16_GEMM_SOURCE, BF16_GEMM_COMPILER_FLAGS, fakes)


def panel_gemm_available() -> bool:
    """Whether ``int8_weight_bf16_gemm`` is the many-rows route here (runs, builds, no AMX).

    See :func:`~vllm_modelslim.kernels.float_gemm.panel_gemm_preferred` for why AMX CPUs keep oneDNN.
    """
    return panel_gemm_preferred() and bf16_gemm_unavailable() is None


def ops_unavailable() -> str | None:
    """Why the ops cannot be built or loaded here, or None once they are registered (cached per process)."""
    fakes = {
        "vllm_modelslim::int8_weight_vnni_linear": _linear_fake,
        "vllm_modelslim::int8_weight_vnni_unpack": _unpack_fake,
        "vllm_modelslim::int8_weight_vnni_moe": _moe_fake,
    }
    return load_cpu_ops(SOURCE, COMPILER_FLAGS, fakes)


class Avx512VnniWeightOnlyInt8(Avx512WeightOnlyInt8):
    """``int8_weight_vnni_linear`` (few rows) / ``int8_weight_bf16_gemm`` or the block GEMM (many rows).

    Keeps ``weight`` as uint8 ``[N/16, K_pad/4, 64]`` (``q + 128``), scales and zero points ``[N]``.
    """

    name = "cpu_int8_vnni_w8a16"
    cpu_flags = CPU_FLAGS
    ops_unavailable = staticmethod(ops_unavailable)
    copies_weight = True  # its own layout, whatever the padding

    @classmethod
    def can_implement(cls, config: WeightOnlyConfig) -> tuple[bool, str | None]:
        if config.act_dtype != torch.bfloat16:
            # float32's 24-bit mantissas would need more limbs to stay as exact as its float path
            return False, f"bf16 activations only, not {config.act_dtype}"
        if config.out_features % TILE_N:
            return False, f"N = {config.out_features} is not a multiple of {TILE_N}"
        return super().can_implement(config)

    def __init__(self, config, weight, weight_scale, zero_point):
        super().__init__(config, weight, weight_scale, zero_point)
        self.weight = pack_int8_vnni(self.weight).view(torch.uint8) ^ 0x80  # u = q + 128
        self.panel_gemm = self.many_rows_dtype == torch.bfloat16 and panel_gemm_available()
        self.many_rows_from = BF16_GEMM_MANY_ROWS_FROM if self.panel_gemm else MANY_ROWS_FROM

    def forward_few_rows(self, x, bias):  # noqa: D102
        return self._forward(torch.ops.vllm_modelslim.int8_weight_vnni_linear, x, bias)

    def forward_many_rows(self, x, bias):  # noqa: D102
        if not self.panel_gemm:
            return super().forward_many_rows(x, bias)
        return self._forward(torch.ops.vllm_modelslim.int8_weight_bf16_gemm, x, bias)

    def _forward(self, op, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``op(x padded to K_pad, weight, scale, zero_point, bias)``: ``[M, N]`` in x's dtype."""
        x_padded = F.pad(x, (0, self.k_pad)) if self.k_pad else x
        return op(
            x_padded.contiguous(),
            self.weight,
            self.weight_scale,
            self.zero_point,
            None if bias is None else bias.to(torch.float32).contiguous(),
        )

    def weight_t_block(self, cols: slice, scratch: torch.Tensor) -> torch.Tensor:  # noqa: D102
        shape = (self.weight.shape[1] * 4, cols.stop - cols.start)  # [K_pad, columns]
        # the scratch holds K × columns: with padded K, unpack into a fresh buffer and hand out K rows
        out = torch.empty(shape, dtype=scratch.dtype) if self.k_pad else scratch.view(shape)
        torch.ops.vllm_modelslim.int8_weight_vnni_unpack(self.weight, cols.start, cols.stop, out)
        return out[: self.config.in_features]
