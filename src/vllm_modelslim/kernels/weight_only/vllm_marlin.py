"""Weight-only GEMM on vLLM's Marlin kernel (``marlin_gemm``; CUDA, compute capability ≥ 7.5).

Marlin dequantizes ``W = (u − b)·s`` per K-group in the activation dtype,
with unsigned stored values ``u = q + 2^(bits−1)`` (GPTQ words repacked by
``gptq_marlin_repack``) and ``b`` either the type's bias ``2^(bits−1)``
(``uint4b8``/``uint8b128``, symmetric) or, for 4-bit weights, an integer
zero point ``z + 8`` per (group, channel) (``uint4``, AWQ style), exactly
ModelSlim's ``(q − z)·s``. Marlin has no 8-bit type with zero points, and
no float zero points in this use, so those cases go to the next kernel.
Scales and zero points are permuted as vLLM's ``marlin_permute_scales`` /
``marlin_zero_points`` do (:mod:`vllm_modelslim.kernels.vllm_cuda.gptq_layout`).
Supported: fp16/bf16 activations, per-channel or K-groups of 32, 64, 128,
N % 64 == 0 and K % 128 == 0 (no padding here).

Not run on a GPU yet: the layout is unit-tested on CPU (``tests/unit/
test_vllm_cuda_weight_only_mapping.py``), the op itself only by the ``gpu``
tests, which have not run.
"""

from __future__ import annotations

import torch

from vllm_modelslim.kernels.vllm_cuda.gptq_layout import (
    gptq_pack_weight,
    group_rows,
    marlin_pack_zero_points,
    marlin_permute_scales,
    unsigned_bias,
)
from vllm_modelslim.kernels.vllm_cuda.weight_only_ops import (
    MARLIN_OPS,
    gptq_marlin_repack,
    marlin_gemm,
    marlin_workspace,
    weight_type_id,
)
from vllm_modelslim.kernels.weight_only.base import WeightOnlyConfig
from vllm_modelslim.kernels.weight_only.vllm_gptq import GptqLayout, VllmGptqWeightOnly

_GROUP_SIZES = (32, 64, 128)
_K_MULTIPLE = 128
_N_MULTIPLE = 64


class VllmMarlinWeightOnly(VllmGptqWeightOnly):
    """``marlin_gemm`` over a ``gptq_marlin_repack`` weight (CUDA, sm75+)."""

    name = "vllm_marlin"
    ops = MARLIN_OPS
    op_family = "Marlin"
    min_capability = 75

    @classmethod
    def can_implement(cls, config: WeightOnlyConfig) -> tuple[bool, str | None]:
        why = cls.common_refusal(config)
        if why is not None:
            return False, why
        if config.zero_points == "float":
            return False, "zero points that are not integers in the unsigned range"
        if config.zero_points == "integer" and config.bits != 4:
            return False, "Marlin has zero points for 4-bit weights only"
        if not config.per_channel and config.group_size not in _GROUP_SIZES:
            return False, f"group size {config.group_size} is not per-channel, 32, 64 or 128"
        if config.in_features % _K_MULTIPLE or config.out_features % _N_MULTIPLE:
            return False, f"needs K % {_K_MULTIPLE} == 0 and N % {_N_MULTIPLE} == 0"
        return True, None

    @classmethod
    def gptq_layout(cls, config, weight, weight_scale, zero_point) -> GptqLayout:  # noqa: D102
        per_group = not config.per_channel
        zeros = torch.empty(0, dtype=torch.int32, device=weight.device)
        if zero_point is not None:
            zeros = marlin_pack_zero_points(group_rows(zero_point + unsigned_bias(config.bits)))
        return GptqLayout(
            words=gptq_pack_weight(weight, config.bits),
            scales=marlin_permute_scales(group_rows(weight_scale), per_group).to(config.act_dtype),
            zeros=zeros,
            type_id=weight_type_id(config.bits, zero_points=zero_point is not None),
            group_size=config.group_size if per_group else -1,
        )

    def __init__(self, config, weight, weight_scale, zero_point):
        super().__init__(config, weight, weight_scale, zero_point)
        workspace = marlin_workspace(self.weight.device, config.out_features)
        self.register_buffer("workspace", workspace, persistent=False)

    def _pack_on_device(self, layout):
        c = self.config
        return gptq_marlin_repack(layout.words, c.in_features, c.out_features, c.bits)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:  # noqa: D102
        c = self.config
        y = marlin_gemm(
            x.contiguous(),
            self.weight,
            self.weight_scale,
            self.zero_point,
            self.workspace,
            self.type_id,
            c.out_features,
            c.in_features,
        )
        return self.add_bias(y, bias)
