"""Weight-only GEMM on vLLM's Machete kernel (``machete_mm``; CUTLASS, Hopper sm90 only).

Machete dequantizes ``W = u·s + z'`` per K-group in the activation dtype,
with unsigned stored values ``u``: for ModelSlim's ``(q − z)·s`` the weight
is stored as ``u = q + 2^(bits−1)`` and, with zero points, ``z' = −(z +
2^(bits−1))·s`` (vLLM's own pre-scaled zero points for ``uint4``/``uint8``,
``MacheteLinearKernel``), computed in float32 and rounded once to the
activation dtype; without zero points the type's bias subtracts
``2^(bits−1)`` (``uint4b8``/``uint8b128``). Float zero points (non-integer
or outside the unsigned range) work the same. Supported, as vLLM's
``machete_utils``: fp16/bf16 activations, 4- or 8-bit weights, per-channel
or K-groups of 64 or 128, K % 64 == 0, N % 128 == 0.

Not run on a GPU yet: the layout is unit-tested on CPU (``tests/unit/
test_vllm_cuda_weight_only_mapping.py``), the op itself only by the ``gpu``
tests, which have not run.
"""

from __future__ import annotations

import torch

from vllm_modelslim.kernels.vllm_cuda.gptq_layout import gptq_pack_weight, group_rows, unsigned_bias
from vllm_modelslim.kernels.vllm_cuda.weight_only_ops import (
    MACHETE_OPS,
    machete_mm,
    machete_prepack_b,
    weight_type_id,
)
from vllm_modelslim.kernels.weight_only.base import WeightOnlyConfig
from vllm_modelslim.kernels.weight_only.vllm_gptq import GptqLayout, VllmGptqWeightOnly

_GROUP_SIZES = (64, 128)
_K_MULTIPLE = 64
_N_MULTIPLE = 128


class VllmMacheteWeightOnly(VllmGptqWeightOnly):
    """``machete_mm`` over a ``machete_prepack_B`` weight (CUDA, sm90)."""

    name = "vllm_machete"
    ops = MACHETE_OPS
    op_family = "Machete"
    min_capability = 90
    exact_capability = 90

    @classmethod
    def can_implement(cls, config: WeightOnlyConfig) -> tuple[bool, str | None]:
        why = cls.common_refusal(config)
        if why is not None:
            return False, why
        if not config.per_channel and config.group_size not in _GROUP_SIZES:
            return False, f"group size {config.group_size} is not per-channel, 64 or 128"
        if config.in_features % _K_MULTIPLE or config.out_features % _N_MULTIPLE:
            return False, f"needs K % {_K_MULTIPLE} == 0 and N % {_N_MULTIPLE} == 0"
        return True, None

    @classmethod
    def gptq_layout(cls, config, weight, weight_scale, zero_point) -> GptqLayout:  # noqa: D102
        bias = unsigned_bias(config.bits)
        zeros = None
        if zero_point is not None:
            zeros = group_rows(-(zero_point + bias) * weight_scale).to(config.act_dtype)
        return GptqLayout(
            words=gptq_pack_weight(weight, config.bits),
            scales=group_rows(weight_scale).to(config.act_dtype),
            zeros=zeros,
            type_id=weight_type_id(config.bits, zero_points=zero_point is not None),
            group_size=-1 if config.per_channel else config.group_size,
        )

    def _pack_on_device(self, layout):
        return machete_prepack_b(layout.words, self.config.act_dtype, layout.type_id)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:  # noqa: D102
        y = machete_mm(
            x.contiguous(), self.weight, self.type_id, self.weight_scale, self.zero_point, self.group_arg
        )
        return self.add_bias(y, bias)
