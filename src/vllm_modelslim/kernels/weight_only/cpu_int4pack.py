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

Like the bf16 ``matmul`` on a CPU without native bf16, the op's cost grows
fast with M (156 ms at M = 256, against 43 ms for a float32 ``matmul``), so
from :data:`MANY_ROWS_FROM` rows on the kernel dequantizes the packed weight
block by block to float32 (with the float32 scales, into a shared scratch buffer) and runs a float32 GEMM.
That reads torch's packed layout, measured on torch 2.13: blocks of 64 output
channels, each ``[K, 32]`` bytes whose low nibble is channel ``j`` and high
nibble channel ``j + 32`` of the block. The layout is checked against the
weight at load; if it differs (another torch, or torch's AVX2 or Arm code, which
pack 32-channel blocks), only the op is used.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from vllm_modelslim.kernels.float_gemm import float32_gemm_by_blocks
from vllm_modelslim.kernels.row_dispatch import MANY_ROWS_FROM, RowDispatchMixin
from vllm_modelslim.kernels.weight_only.base import WeightOnlyConfig, WeightOnlyKernel

_GROUP_SIZES = (32, 64, 128, 256)
_N_MULTIPLE = 16
_PACK_BLOCK = 64


def op_group_size(group_size: int) -> int | None:
    """The largest group size the op takes that divides ``group_size``, or None."""
    return next((g for g in reversed(_GROUP_SIZES) if group_size % g == 0), None)


class CpuInt4PackWeightOnlyInt4(RowDispatchMixin, WeightOnlyKernel):
    """``aten._weight_int4pack_mm_for_cpu`` (few rows) / float32 GEMM (many rows) kernel (CPU)."""

    name = "cpu_int4pack"
    device_types = frozenset({"cpu"})
    copies_weight = True

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
        if config.out_features % _PACK_BLOCK == 0 and torch.equal(self._unpacked_t(slice(None)).T, unsigned):
            self.many_rows_from = MANY_ROWS_FROM
            self.register_row_dispatch()

    def _unpacked_t(self, cols: slice) -> torch.Tensor:
        """Unsigned nibbles ``u = q + 8`` of output channels ``cols`` as uint8 ``[K, len(cols)]``."""
        k = self.config.in_features
        blocks = self.weight.view(-1, k, _PACK_BLOCK // 2)[
            (cols.start or 0) // _PACK_BLOCK : (cols.stop or self.config.out_features) // _PACK_BLOCK
        ]
        nibbles = torch.cat((blocks & 15, blocks >> 4), dim=-1)  # [blocks, K, 64]
        return nibbles.permute(1, 0, 2).reshape(k, -1)

    def _dequantized_t(self, cols: slice, scratch: torch.Tensor | None = None) -> torch.Tensor:
        """``Wᵀ[:, cols] = ((u − 8 − z)·s)ᵀ`` as float32 ``[K, len(cols)]`` (in ``scratch`` if given)."""
        scale = self.weight_scale[cols].T.unsqueeze(1)  # [G, 1, n]
        shift = 8.0 if self.zero_point is None else 8.0 + self.zero_point[cols].T.unsqueeze(1)
        u = self._unpacked_t(cols).unflatten(0, (-1, self.config.group_size))  # [G, g, n]
        if scratch is None:
            scratch = torch.empty(u.numel(), dtype=torch.float32, device=u.device)
        w = torch.sub(u, shift, out=scratch.view(u.shape))
        return w.mul_(scale).flatten(0, 1)

    def forward_few_rows(self, x, bias):  # noqa: D102
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x.contiguous(), self.weight, self.config.group_size, self.scale_and_zeros
        )
        return y if bias is None else y + bias.to(y.dtype)

    def forward_many_rows(self, x, bias):  # noqa: D102
        y = float32_gemm_by_blocks(x, self._dequantized_t, self.config.out_features)
        if bias is not None:
            y = y + bias.to(torch.float32)
        return y.to(x.dtype)
