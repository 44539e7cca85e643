"""int4 weights kept as int4 × dynamic int8/int4 activations: the project's own AVX-512 VNNI kernel (CPU).

One call per layer (``vllm_modelslim::int4_vnni_linear``,
:mod:`~vllm_modelslim.kernels.cpu_int4_vnni`): each row is quantized per token
exactly as the torch quantizer does (``max|x|`` over the row, ``s = max/qmax``
in float32, ``round_half_even(x / s)`` clamped), and the GEMM multiplies the
int4 weight, stored two values per byte (a quarter of BF16's bytes, half of the
int8 copy the other kernels hold), by the integer activations, then
``((float(acc)·s_x)·s_w) + bias`` in float32, rounded to the output dtype: the
same operations as the two-kernel path (quantizer + scaled int8 GEMM), so the
same bits (unit-tested). It serves W4A8_DYNAMIC (int8 activations) and
W4A4_DYNAMIC (``qmax`` = 7) with per-channel weight scales; K and N multiples of 16.
"""

from __future__ import annotations

import torch

from vllm_modelslim.kernels.base import channel_vector, register_buffers
from vllm_modelslim.kernels.cpu_int4_vnni import (
    TILE_N,
    CpuInt4VnniMixin,
    pack_int4_vnni,
    require_int4_vnni_ops,
)
from vllm_modelslim.kernels.dynamic_int8_linear.base import DynamicInt8LinearConfig, DynamicInt8LinearKernel


class Int4VnniLinear(CpuInt4VnniMixin, DynamicInt8LinearKernel):
    """Per-token int8/int4 activations × int4 weights stored as int4 (see the module docstring).

    Holds ``weight_packed`` uint8 ``[N/16, K/8, 64]`` (``K·N/2`` bytes) and
    ``weight_scale`` float32 ``[N]``; ``forward(x [M, K], bias)`` takes bf16 or
    float32 ``x`` and returns ``[M, N]`` in ``x.dtype``.
    """

    name = "cpu_int4_vnni"

    @classmethod
    def can_implement(cls, config: DynamicInt8LinearConfig) -> tuple[bool, str | None]:
        if config.weight_bits != 4:
            return False, f"int4 weights only, not {config.weight_bits}-bit ones"
        if config.activation_dtype not in (torch.bfloat16, torch.float32):
            return False, f"bf16 or float32 activations only, not {config.activation_dtype}"
        if config.in_features % 16 or config.out_features % TILE_N:
            return False, "K and N must be multiples of 16"
        if config.rank_row_max:
            return False, "no per-token scales across tensor-parallel ranks"
        return cls.ops_reason()

    def __init__(self, config: DynamicInt8LinearConfig, weight: torch.Tensor, weight_scale: torch.Tensor):
        super().__init__()
        require_int4_vnni_ops()
        self.config = config
        self.qmax = float(2 ** (config.activation_bits - 1) - 1)
        register_buffers(
            self,
            weight_packed=pack_int4_vnni(weight),
            weight_scale=channel_vector(weight_scale, torch.float32),
        )

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:  # noqa: D102
        bias = None if bias is None else bias.to(torch.float32).contiguous()
        return torch.ops.vllm_modelslim.int4_vnni_linear(
            x.contiguous(), self.weight_packed, self.weight_scale, bias, self.qmax
        )
