"""CPU weight-only int8 kernel: ``aten._weight_int8pack_mm`` for few rows, float32 GEMM for many.

``_weight_int8pack_mm(x, w_q, ones)`` returns ``x·w_qᵀ`` rounded to the
activation dtype; the per-channel scale, the zero-point correction
``− z[n]·Σ_k x[m, k]`` and the bias are applied afterwards in float32, so the
scales keep full precision (passing them to the op would round them to bf16).
The op reads out of bounds (and crashes or returns garbage) unless K is a
multiple of 16 on the CPU build we use, so K is zero-padded to that at load.
Measured with K = N = 4096 on 2 cores: 0.75 ms at M = 1 against 2.3 ms for a
bf16 ``matmul`` (``benchmarks/kernels.py``); with fp32 activations the op is
several times slower than a float ``matmul``, hence bf16/fp16 only.

Without native bf16 arithmetic the op's cost grows with M like a bf16
``matmul`` (130 ms at M = 256, against 43 ms for float32), so from
:data:`MANY_ROWS_FROM` rows on the kernel converts the int8 weight to float32
(exact) one block of output channels at a time, into a shared scratch buffer,
and runs a float32 GEMM: the same epilogue, a more precise accumulator, no
float copy of the weight kept between calls.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vllm_modelslim.kernels.float_gemm import float32_gemm_by_blocks
from vllm_modelslim.kernels.row_dispatch import MANY_ROWS_FROM, RowDispatchMixin
from vllm_modelslim.kernels.weight_only.base import WeightOnlyConfig, WeightOnlyKernel

_K_MULTIPLE = 16


class Int8PackWeightOnlyInt8(RowDispatchMixin, WeightOnlyKernel):
    """``aten._weight_int8pack_mm`` (few rows) / float32 GEMM (many rows) kernel (CPU, bf16/fp16 x).

    Per-channel scales only; it keeps them, and the zero points, as ``[N]`` vectors.
    """

    name = "cpu_int8pack"
    device_types = frozenset({"cpu"})
    many_rows_from = MANY_ROWS_FROM

    @classmethod
    def is_supported(cls, device_type: str) -> tuple[bool, str | None]:
        if device_type != "cpu":
            return False, "aten._weight_int8pack_mm is used on CPU only"
        if not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
            return False, "this torch build lacks aten._weight_int8pack_mm"
        return True, None

    @classmethod
    def can_implement(cls, config: WeightOnlyConfig) -> tuple[bool, str | None]:
        if not config.per_channel:
            return False, "per-group scales are not supported"
        if config.act_dtype not in (torch.bfloat16, torch.float16):
            return False, f"slow for {config.act_dtype} activations"
        return True, None

    def __init__(self, config, weight, weight_scale, zero_point):
        super().__init__(config, weight, weight_scale, zero_point)
        self.weight_scale = self.weight_scale.reshape(-1)  # [N, 1] -> [N]
        if self.zero_point is not None:
            self.zero_point = self.zero_point.reshape(-1)
        self.k_pad = (-weight.shape[1]) % _K_MULTIPLE
        if self.k_pad:
            self.weight = F.pad(self.weight, (0, self.k_pad)).contiguous()
            self.copies_weight = True  # the padded copy replaces the checkpoint's
        self.register_buffer(
            "unit_scale", torch.ones(weight.shape[0], dtype=config.act_dtype), persistent=False
        )
        self.register_row_dispatch()

    def forward_few_rows(self, x, bias):  # noqa: D102
        x_padded = F.pad(x, (0, self.k_pad)) if self.k_pad else x
        acc = torch.ops.aten._weight_int8pack_mm(x_padded.contiguous(), self.weight, self.unit_scale)
        return self._epilogue(acc.to(torch.float32), x, bias)

    def forward_many_rows(self, x, bias):  # noqa: D102
        k = self.config.in_features

        def weight_t_block(cols: slice, scratch: torch.Tensor) -> torch.Tensor:
            block = scratch.view(cols.stop - cols.start, k)
            return block.copy_(self.weight[cols, :k]).T  # int8 → float32 is exact

        acc = float32_gemm_by_blocks(x, weight_t_block, self.config.out_features)
        return self._epilogue(acc, x, bias)

    def _epilogue(self, y: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.zero_point is not None:
            y = y - x.to(torch.float32).sum(dim=-1, keepdim=True) * self.zero_point
        y = y * self.weight_scale
        if bias is not None:
            y = y + bias.to(torch.float32)
        return y.to(x.dtype)
