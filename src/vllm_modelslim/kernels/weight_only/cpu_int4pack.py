"""CPU weight-only int4 kernel on ``aten._weight_int4pack_mm_for_cpu``.

torch's CPU int4 kernel computes ``W = (u − 8)·scale + zero`` from unsigned
nibbles ``u`` packed by ``aten._convert_weight_to_int4pack_for_cpu``, with
``scale`` and ``zero`` per (K-group, output channel) in the activation dtype.
With ``u = q + 8`` and ``zero = −z·s`` that is ModelSlim's ``(q − z)·s``; the
scales and zero points are rounded to the activation dtype (bf16: 8 bits), an
error of the same order as bf16 activations. The op needs N % 16 == 0 and a
group size of 32, 64, 128 or 256 (measured on torch 2.13 CPU); a larger group
that one of these divides (per-channel: g = K) repeats its scales and zero
points over op groups, the same values. Measured at
K = N = 4096, g = 128, 2 threads: see ``benchmarks/kernels.py``.

The op's cost grows fast with M (156 ms at M = 256, against 43 ms for a
float32 ``matmul``, without native bf16), so from :data:`MANY_ROWS_FROM` rows
on (:data:`BF16_MANY_ROWS_FROM` on the bf16 route) the kernel dequantizes the
packed weight block by block into a shared scratch buffer and runs a GEMM
(:mod:`~vllm_modelslim.kernels.float_gemm`): bf16 on CPUs with native bf16
(AVX512-BF16, AMX) for bf16 activations, float32 otherwise. Both paths compute
``W = (u − 8)·s + zero`` from the op's own ``scale_and_zeros`` (in the
activation dtype), in float32 arithmetic; the bf16 path rounds ``W`` to bf16
(roundings the op makes too: the same test bound). So the kernel keeps no
float32 copy of the scales (:attr:`copies_scales`): the weight costs ½ byte
per value plus 4 bytes per (group, channel) in bf16, 0.27× BF16 at g = 128.
Measured on a 2-core AMD EPYC with AVX512-BF16 (one thread, K = 2048, N =
6144, M = 512): 0.37× vLLM's prepacked oneDNN bf16 GEMM over float32 blocks,
0.73× over bf16 blocks (``benchmarks/kernels.py``); on AMX CPUs the bf16 route
is the one taken, its speed there unmeasured.

That reads torch's packed layout, measured on torch 2.13: blocks of 64 output
channels, each ``[K, 32]`` bytes whose low nibble is channel ``j`` and high
nibble channel ``j + 32`` of the block. The layout is checked against the
weight at load; if it differs (another torch, or torch's AVX2 or Arm code, which
pack 32-channel blocks), only the op is used.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from vllm_modelslim.kernels.float_gemm import gemm_by_blocks, many_rows_gemm_dtype
from vllm_modelslim.kernels.row_dispatch import MANY_ROWS_FROM, RowDispatchMixin
from vllm_modelslim.kernels.weight_only.base import WeightOnlyConfig, WeightOnlyKernel

_GROUP_SIZES = (32, 64, 128, 256)
_N_MULTIPLE = 16
_PACK_BLOCK = 64
BF16_MANY_ROWS_FROM = 64
"""Smallest M of the many-rows path when its GEMM runs in bf16: the measured crossover with the op
(AVX512-BF16, one thread, K = 2048, N = 6144: op 9.4 / 18.5 ms, bf16 blocks 13.5 / 17.2 ms at M = 32 / 64)."""


def op_group_size(group_size: int) -> int | None:
    """The largest group size the op takes that divides ``group_size``, or None."""
    return next((g for g in reversed(_GROUP_SIZES) if group_size % g == 0), None)


class CpuInt4PackWeightOnlyInt4(RowDispatchMixin, WeightOnlyKernel):
    """``aten._weight_int4pack_mm_for_cpu`` (few rows) / bf16 or float32 block GEMM (many rows) kernel (CPU).

    Keeps the packed weight and ``scale_and_zeros`` (``[G, N, 2]`` in the
    activation dtype) only; ``weight_scale`` and ``zero_point`` are None.
    """

    name = "cpu_int4pack"
    device_types = frozenset({"cpu"})
    copies_weight = True
    copies_scales = True

    @classmethod
    def is_supported(cls, device_type: str) -> tuple[bool, str | None]:
        if device_type != "cpu":
            return False, "aten._weight_int4pack_mm_for_cpu is a CPU kernel"
        if not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
            return False, "this torch build lacks aten._weight_int4pack_mm_for_cpu"
        return True, None

    @classmethod
    def can_implement(cls, config: WeightOnlyConfig) -> tuple[bool, str | None]:
        if config.bits != 4:
            return False, f"packs 4-bit values, not {config.bits}-bit ones"
        if op_group_size(config.group_size) is None:
            return False, f"group size {config.group_size} is not a multiple of one of {_GROUP_SIZES}"
        if config.out_features % _N_MULTIPLE:
            return False, f"N = {config.out_features} is not a multiple of {_N_MULTIPLE}"
        if config.act_dtype not in (torch.bfloat16, torch.float16, torch.float32):
            return False, f"no {config.act_dtype} activations"
        return True, None

    def __init__(self, config, weight, weight_scale, zero_point):
        op_group = op_group_size(config.group_size)
        if op_group is not None and op_group != config.group_size:
            repeats = config.group_size // op_group
            weight_scale = weight_scale.reshape(config.out_features, -1).repeat_interleave(repeats, dim=1)
            if zero_point is not None:
                zero_point = zero_point.reshape(config.out_features, -1).repeat_interleave(repeats, dim=1)
            config = replace(config, group_size=op_group)
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
        self.weight_scale = self.zero_point = None  # only scale_and_zeros is kept (copies_scales)
        self.many_rows_dtype = many_rows_gemm_dtype(config.act_dtype)
        if config.out_features % _PACK_BLOCK == 0 and torch.equal(self._unpacked_t(slice(None)).T, unsigned):
            bf16_gemm = self.many_rows_dtype == torch.bfloat16
            self.many_rows_from = BF16_MANY_ROWS_FROM if bf16_gemm else MANY_ROWS_FROM
            self.register_row_dispatch()

    def _unpacked_t(self, cols: slice) -> torch.Tensor:
        """Unsigned nibbles ``u = q + 8`` of output channels ``cols`` as uint8 ``[K, len(cols)]``."""
        k = self.config.in_features
        blocks = self.weight.view(-1, k, _PACK_BLOCK // 2)[
            (cols.start or 0) // _PACK_BLOCK : (cols.stop or self.config.out_features) // _PACK_BLOCK
        ]
        nibbles = torch.cat((blocks & 15, blocks >> 4), dim=-1)  # [blocks, K, 64]
        return nibbles.permute(1, 0, 2).reshape(k, -1)

    def _scale_and_zero(self, cols: slice, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """The op's ``s`` and ``zero = −z·s`` of output channels ``cols``, each contiguous as ``shape``.

        (Contiguous: an elementwise op broadcasting a strided operand runs several times slower.)
        """
        columns = self.scale_and_zeros[:, cols]  # [G, n, 2]
        return columns[..., 0].contiguous().view(shape), columns[..., 1].contiguous().view(shape)

    def _dequantized_t(self, cols: slice, scratch: torch.Tensor | None = None) -> torch.Tensor:
        """``Wᵀ[:, cols] = ((u − 8)·s + zero)ᵀ`` as float32 ``[K, len(cols)]`` (in ``scratch`` if given)."""
        n = (cols.stop or self.config.out_features) - (cols.start or 0)
        scale, zero = self._scale_and_zero(cols, (-1, 1, n))  # [G, 1, n]
        u = self._unpacked_t(cols).unflatten(0, (-1, self.config.group_size))  # [G, g, n]
        if scratch is None:
            scratch = torch.empty(u.numel(), dtype=torch.float32, device=u.device)
        w = torch.sub(u, 8.0, out=scratch.view(u.shape))
        return w.mul_(scale.to(torch.float32)).add_(zero.to(torch.float32)).flatten(0, 1)

    def _dequantized_t_bf16(self, cols: slice, scratch: torch.Tensor) -> torch.Tensor:
        """``Wᵀ[:, cols]`` as bf16 ``[K, len(cols)]`` in ``scratch``: ``zero + q·s`` in float32, rounded once.

        ``u ^ 8`` is ``q = u − 8`` as a 4-bit two's complement number, so shifting
        the xor-ed byte (as int8) right by 4 sign-extends the high nibble's ``q``,
        and shifting it left by 4 first the low one's; both are exact in bf16.
        """
        k, group = self.config.in_features, self.config.group_size
        n = cols.stop - cols.start
        first, last = cols.start // _PACK_BLOCK, cols.stop // _PACK_BLOCK
        blocks = self.weight.view(-1, k, _PACK_BLOCK // 2)[first:last]
        signed = torch.empty((k, last - first, _PACK_BLOCK // 2), dtype=torch.uint8, device=blocks.device)
        torch.bitwise_xor(blocks.permute(1, 0, 2), 0x88, out=signed)  # never in place: the weight
        signed = signed.view(torch.int8)  # [K, blocks, 32]
        w = scratch.view(k, n // _PACK_BLOCK, 2, _PACK_BLOCK // 2)
        w[:, :, 1].copy_(signed >> 4)
        w[:, :, 0].copy_((signed << 4) >> 4)
        grouped = w.view(k // group, group, n // _PACK_BLOCK, 2, _PACK_BLOCK // 2)
        scale, zero = self._scale_and_zero(cols, (k // group, 1, n // _PACK_BLOCK, 2, _PACK_BLOCK // 2))
        torch.addcmul(zero, grouped, scale, out=grouped)  # bf16 in, float32 arithmetic, bf16 out
        return scratch.view(k, n)

    def forward_few_rows(self, x, bias):  # noqa: D102
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x.contiguous(), self.weight, self.config.group_size, self.scale_and_zeros
        )
        return y if bias is None else y + bias.to(y.dtype)

    def forward_many_rows(self, x, bias):  # noqa: D102
        if self.many_rows_dtype == torch.bfloat16:
            y = gemm_by_blocks(x, self._dequantized_t_bf16, self.config.out_features, torch.bfloat16)
            return y if bias is None else y.add_(bias.to(y.dtype))
        y = gemm_by_blocks(x, self._dequantized_t, self.config.out_features, torch.float32)
        if bias is not None:
            y = y.add_(bias.to(torch.float32))
        return y.to(x.dtype)
