"""CPU weight-only int4 kernel on AVX-512 BF16: the project's ``int4_bf16_linear`` and ``int4_bf16_gemm``.

``kernels/csrc/int4_bf16_weight_linear.cpp``, built on first use
(:mod:`~vllm_modelslim.kernels.cpp_extension`). The weight stays int4, two
values per byte, in the project's int4 layout
(:func:`~vllm_modelslim.kernels.cpu_int4_vnni.pack_int4_vnni`), with float32
scales and zero points ``[K/g, N]``: 0.5 byte per weight plus 8 (4 without
zero points) per (group, channel), 0.28× BF16 at g = 128.

* Few rows (:attr:`many_rows_from`): ``int4_bf16_linear`` turns the nibbles
  into bf16 in registers (a 16-entry table: every int4 value is exact in bf16)
  and multiplies them with the bf16 activations by AVX512-BF16 ``vdpbf16ps``
  (products exact in float32, float32 sums per K-group), then applies each
  group's zero point (``z·Σ_{k∈g} x``) and scale in float32 and rounds once.
* Many rows, CPUs without AMX: ``int4_bf16_gemm`` dequantizes ``W = (q − z)·s``
  (float32, one rounding to bf16) 64 output channels × 512 k at a time into a
  panel in cache and multiplies every row with it by ``vdpbf16ps`` (float32
  sums, bias in float32, one rounding; ``kernels/csrc/bf16_panel_gemm.h``):
  no bf16 copy of the weight is ever written to memory.
* Many rows, AMX CPUs (:func:`~vllm_modelslim.kernels.float_gemm.panel_gemm_preferred`):
  ``int4_bf16_dequant`` writes ``Wᵀ`` block by block as bf16 (the same
  values) into the shared scratch buffer and oneDNN's bf16 GEMM, on AMX
  tiles there, multiplies (:func:`~vllm_modelslim.kernels.float_gemm.gemm_by_blocks`).

bf16 activations only (float32 and fp16 layers keep ``cpu_int4pack``); needs
AVX512F/BW/VL and AVX512-BF16 (Intel from Cooper Lake, every AMX CPU, AMD
from Zen 4), N % 16 == 0 and a group size that is a multiple of 8.

Measured on a 2-core AMD EPYC (AVX512-BF16, no AMX; 2 threads, K = 2048, N =
6144, g = 128 with zero points): at M = 1, 0.17–0.20 ms with the weight in
cache and 0.23–0.28 ms from memory (12 weight copies cycled), against 0.34 /
0.35 ms for torch's int4pack op; at M = 8, 0.76–0.79 ms against 1.27 ms
(int4pack) and 0.78 ms (vLLM's prepacked bf16 oneDNN GEMM of the unquantized
weight). The few-rows op is compute-bound (decoding the nibbles costs as much
as the products; four independent sums per row hide ``vdpbf16ps``'s latency at
one or two rows). The panel GEMM takes over at :data:`BF16_MANY_ROWS_FROM`.
"""

from __future__ import annotations

import torch

from vllm_modelslim.kernels.cpp_extension import CompiledCpuOpsMixin, load_cpu_ops, require_cpu_ops
from vllm_modelslim.kernels.cpu_int4_vnni import BLOCK_K, TILE_N, pack_int4_vnni
from vllm_modelslim.kernels.float_gemm import gemm_by_blocks, panel_gemm_preferred
from vllm_modelslim.kernels.row_dispatch import RowDispatchMixin
from vllm_modelslim.kernels.weight_only.base import WeightOnlyConfig, WeightOnlyKernel

SOURCE = "int4_bf16_weight_linear.cpp"
CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_bf16")
"""x86 flags the compiled code executes."""
COMPILER_FLAGS = ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16")
BF16_MANY_ROWS_FROM = 20
"""Smallest M of ``int4_bf16_gemm``: the measured crossover (same host as the module docstring, g = 128
with zero points; K = 2048 / N = 6144 and K = 6144 / N = 2048: op 1.95 / 2.14 ms, panel GEMM 2.15 /
2.14 ms at M = 16; op 2.32 / 3.23 ms, panel GEMM 2.35 / 2.45 ms at M = 24)."""
BLOCKS_MANY_ROWS_FROM = 48
"""Smallest M of the dequantized blocks (AMX CPUs): the measured crossover of that path on the
AVX512-BF16 host (op 3.0 / 6.4 ms, dequantize + GEMM 4.0 / 5.8 ms at M = 32 / 64); unmeasured on AMX."""


def _linear_fake(x, weight, scale, zero_point, bias, group_size):
    """Shape of ``int4_bf16_linear`` / ``int4_bf16_gemm(x [M, K], weight [N/16, K/8, 64], ...)``: [M, N]."""
    return x.new_empty((x.shape[0], weight.shape[0] * TILE_N))


def _dequant_fake(weight, scale, zero_point, group_size, col_start, col_stop, out):
    """``int4_bf16_dequant`` writes ``out`` in place and returns nothing."""


def ops_unavailable() -> str | None:
    """Why the ops cannot be built or loaded here, or None once they are registered (cached per process)."""
    fakes = {
        "vllm_modelslim::int4_bf16_linear": _linear_fake,
        "vllm_modelslim::int4_bf16_gemm": _linear_fake,
        "vllm_modelslim::int4_bf16_dequant": _dequant_fake,
    }
    return load_cpu_ops(SOURCE, COMPILER_FLAGS, fakes)


class Avx512Bf16WeightOnlyInt4(CompiledCpuOpsMixin, RowDispatchMixin, WeightOnlyKernel):
    """``int4_bf16_linear`` (few rows) / ``int4_bf16_gemm`` or dequantized blocks (many rows), bf16 only.

    Keeps ``weight`` packed uint8 ``[N/16, K/8, 64]``, ``weight_scale`` and
    ``zero_point`` (or None) as float32 ``[K/g, N]``.
    """

    name = "cpu_int4_avx512bf16"
    cpu_flags = CPU_FLAGS
    ops_unavailable = staticmethod(ops_unavailable)
    copies_weight = True
    copies_scales = True

    @classmethod
    def can_implement(cls, config: WeightOnlyConfig) -> tuple[bool, str | None]:
        if config.bits != 4:
            return False, f"packs 4-bit values, not {config.bits}-bit ones"
        if config.act_dtype != torch.bfloat16:
            return False, f"bf16 activations only, not {config.act_dtype}"
        if config.out_features % TILE_N:
            return False, f"N = {config.out_features} is not a multiple of {TILE_N}"
        if config.group_size % BLOCK_K:
            return False, f"group size {config.group_size} is not a multiple of {BLOCK_K}"
        return cls.ops_reason()

    def __init__(self, config, weight, weight_scale, zero_point):
        require_cpu_ops(self.ops_unavailable())
        super().__init__(config, weight, weight_scale, zero_point)
        n, groups = config.out_features, config.in_features // config.group_size
        self.weight = pack_int4_vnni(self.weight)
        self.weight_scale = self.weight_scale.reshape(n, groups).T.contiguous()
        if self.zero_point is not None:
            self.zero_point = self.zero_point.reshape(n, groups).T.contiguous()
        self.panel_gemm = panel_gemm_preferred()
        self.many_rows_from = BF16_MANY_ROWS_FROM if self.panel_gemm else BLOCKS_MANY_ROWS_FROM
        self.register_row_dispatch()

    def forward_few_rows(self, x, bias):  # noqa: D102
        return self._forward(torch.ops.vllm_modelslim.int4_bf16_linear, x, bias)

    def forward_many_rows(self, x, bias):  # noqa: D102
        if self.panel_gemm:
            return self._forward(torch.ops.vllm_modelslim.int4_bf16_gemm, x, bias)
        y = gemm_by_blocks(x, self._dequantized_t, self.config.out_features, torch.bfloat16)
        return y if bias is None else y.add_(bias.to(y.dtype))

    def _forward(self, op, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``op(x, weight, scale, zero_point, bias, group_size)``: bf16 ``[M, N]``."""
        return op(
            x.contiguous(),
            self.weight,
            self.weight_scale,
            self.zero_point,
            None if bias is None else bias.to(torch.float32).contiguous(),
            self.config.group_size,
        )

    def _dequantized_t(self, cols: slice, scratch: torch.Tensor) -> torch.Tensor:
        """``Wᵀ[:, cols]`` as bf16 ``[K, len(cols)]`` in ``scratch``."""
        out = scratch.view(self.config.in_features, cols.stop - cols.start)
        torch.ops.vllm_modelslim.int4_bf16_dequant(
            self.weight,
            self.weight_scale,
            self.zero_point,
            self.config.group_size,
            cols.start,
            cols.stop,
            out,
        )
        return out
