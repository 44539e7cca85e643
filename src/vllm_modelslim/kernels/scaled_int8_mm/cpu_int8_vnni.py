"""The project's exact int8 GEMM on AVX-512 VNNI: ``int8_vnni_gemm`` (C++), int32 bias included.

``kernels/csrc/int8_vnni_gemm.cpp``, built on first use
(:mod:`~vllm_modelslim.kernels.cpp_extension`). It returns
``float32(Σ_k x_q·w_q + b_int)``, the same accumulator and conversion as
:class:`~.torch_int_mm.TorchIntMMScaledInt8MM` plus its int32 bias, and the
shared float32 epilogue (:meth:`~.base.ScaledInt8MMKernel.scale_epilogue`)
applies the scales and the float bias: bit-identical to ``torch._int_mm``'s
path for every input. The activation bytes enter ``vpdpbusd`` as
``x_q + 128`` and the weight as signed bytes in 64-byte blocks (16 channels ×
4 inputs); the excess ``128·Σ_k w_q[n, k]`` and the int32 bias leave in one
per-channel constant computed at load.

Why (ModelSlim W8A8 static, whose ``quant_bias`` is an int32 bias): in the
full benchmark model's batch-1 decode profile (K = 2048, 2-core AMD EPYC with
AVX512-VNNI, no AMX) vLLM-CPU's static oneDNN GEMM (:mod:`.vllm_onednn_static`)
took 0.54 ms per call against 0.30 ms for vLLM-CPU's fused dynamic int8 kernel
on the same layers. Measured here (2 threads, K = 2048, N = 6144, bf16 out;
the host's memory bandwidth varied between runs): M = 1, 0.10 ms with the
weight in cache against 0.13–0.16 ms for oneDNN's static GEMM, 0.24–0.65 ms
from memory (6 weight copies cycled) against 0.41–0.64 ms; M = 8, 0.26–0.31
against 0.29–0.33 ms; M = 512, 16.4–17.1 against 16.8–16.9 ms (both near one
``vpdpbusd`` per cycle); M = 16 / 32 / 64 / 128, 0.86 / 1.38 / 2.28 / 4.18 ms
against 0.74 / 1.21 / 2.15 / 3.99 ms from memory (equal with the weight in
cache). The full model's W8A8 static decode went from about 42 to 56 tok/s. Per-channel scales
only; K and N multiples of 16; needs AVX512F/BW/VL and AVX512-VNNI.
"""

from __future__ import annotations

import torch

from vllm_modelslim.kernels.cpp_extension import CompiledCpuOpsMixin, load_cpu_ops, require_cpu_ops
from vllm_modelslim.kernels.scaled_int8_mm.base import (
    ScaledInt8MMConfig,
    ScaledInt8MMKernel,
    weight_row_sums,
)

SOURCE = "int8_vnni_gemm.cpp"
CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_vnni")
"""x86 flags the compiled code executes."""
COMPILER_FLAGS = ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni")
TILE_N = 16
"""Output channels per weight tile."""
BLOCK_K = 4
"""Inputs per 64-byte weight block."""


def _fake(x_q, weight, compensation):
    """Shape of ``int8_vnni_gemm(x_q int8 [M, K], weight int8 [N/16, K/4, 64], compensation int32 [N])``."""
    return x_q.new_empty((x_q.shape[0], weight.shape[0] * TILE_N), dtype=torch.float32)


def ops_unavailable() -> str | None:
    """Why the op cannot be built or loaded here, or None once it is registered (cached per process)."""
    return load_cpu_ops(SOURCE, COMPILER_FLAGS, {"vllm_modelslim::int8_vnni_gemm": _fake})


def pack_int8_vnni(weight: torch.Tensor) -> torch.Tensor:
    """int8 ``[N, K]`` → the op's int8 ``[N/16, K/4, 64]``.

    Byte ``(tile, kq, 4·j + t)`` is ``w[16·tile + j, 4·kq + t]``.

    Raises:
        ValueError: N or K is not a multiple of 16.
    """
    n, k = weight.shape
    if n % TILE_N or k % 16:
        raise ValueError(f"int8 VNNI packing needs N and K multiples of 16, got {n} × {k}")
    blocks = weight.reshape(n // TILE_N, TILE_N, k // BLOCK_K, BLOCK_K).permute(0, 2, 1, 3)
    return blocks.reshape(n // TILE_N, k // BLOCK_K, TILE_N * BLOCK_K).contiguous()


def wrap_int32(values: torch.Tensor) -> torch.Tensor:
    """int64 values reduced modulo 2^32 into int32 (two's complement), as int32 additions wrap."""
    return (((values + 2**31) % 2**32) - 2**31).to(torch.int32)


class CpuInt8VnniScaledInt8MM(CompiledCpuOpsMixin, ScaledInt8MMKernel):
    """The project's ``int8_vnni_gemm`` (CPU with AVX512-VNNI), with or without an int32 bias.

    Holds the packed weight int8 ``[N/16, K/4, 64]``, ``weight_scale`` float32
    ``[N]`` and ``compensation`` int32 ``[N]`` (``128·Σ_k w_q − b_int``);
    ``forward`` as :class:`ScaledInt8MMKernel`.
    """

    name = "cpu_int8_vnni"
    cpu_flags = CPU_FLAGS
    ops_unavailable = staticmethod(ops_unavailable)
    copies_weight = True

    @classmethod
    def can_implement(cls, config: ScaledInt8MMConfig) -> tuple[bool, str | None]:
        if config.group_size:
            return False, "per-group weight scales are not supported"
        if config.in_features % 16 or config.out_features % TILE_N:
            return False, "K and N must be multiples of 16"
        return cls.ops_reason()

    def __init__(self, config, weight, weight_scale, int_bias=None):
        require_cpu_ops(self.ops_unavailable())
        super().__init__(config, weight, weight_scale, int_bias)
        compensation = 128 * weight_row_sums(self.weight)
        if self.int_bias is not None:
            compensation = compensation - self.int_bias.to(torch.int64)
        self.register_buffer("compensation", wrap_int32(compensation), persistent=False)
        self.weight = pack_int8_vnni(self.weight)
        self.int_bias = None  # inside the compensation

    def forward(self, x_q, x_scale, bias, out_dtype):  # noqa: D102
        y = torch.ops.vllm_modelslim.int8_vnni_gemm(x_q.contiguous(), self.weight, self.compensation)
        return self.scale_epilogue(y, x_scale, bias, out_dtype)
