"""vLLM's CUTLASS int8 GEMMs (``cutlass_scaled_mm``, ``cutlass_scaled_mm_azp``) on NVIDIA GPUs.

Per-channel weight scales, bf16/fp16 output, K and N multiples of 16, compute
capability 7.5 or higher (see :mod:`vllm_modelslim.kernels.vllm_cuda.int8_ops`
for the ops' math). The arguments, for ``y = (acc + b_int) · s_x · s_w + b``:

* dynamic activations (``x_scale`` ``[M]``): ``cutlass_scaled_mm(a = x_q,
  b = w_qᵀ, scale_a = s_x [M, 1], scale_b = s_w [N], bias = b)``;
* static activations with an int32 bias (``x_scale`` None, ModelSlim W8A8:
  ``s_w`` is ``deq_scale``, ``b_int`` is ``quant_bias``):
  ``cutlass_scaled_mm_azp(..., scale_a = 1, scale_b = s_w, azp_adj = −b_int,
  azp = None)``, whose epilogue computes ``1 · s_w · float(acc − azp_adj)``
  with the subtraction in int32 (exact, as the torch kernels' ``acc + b_int``);
* static without an int32 bias: ``cutlass_scaled_mm`` with ``scale_a = 1``.

The epilogue multiplies in the order ``s_x · (s_w · acc) + b`` in float32 and
takes the float bias in the output dtype (the torch kernels add it in
float32); both differ from the torch epilogue by float32 rounding only.

Not run on a GPU yet: measured on an H200 was the same mapping in
``/work/shared/gpu/probe_vllm_int8_ops.py`` (relative error 1.7e-3 dynamic,
2.5e-3 static against the float64 reference, bf16 outputs); this class is
tested on CPU with emulated ops (``tests/unit/test_vllm_cuda_int8_mapping.py``)
and by ``tests/gpu`` where a GPU and vLLM's ops are present.
"""

from __future__ import annotations

import torch

from vllm_modelslim.kernels.scaled_int8_mm.base import ScaledInt8MMConfig, ScaledInt8MMKernel
from vllm_modelslim.kernels.vllm_cuda.int8_ops import (
    CUTLASS_ALIGNMENT,
    CUTLASS_OUT_DTYPES,
    VllmInt8Ops,
    int8_ops_unavailable_reason,
    scaled_mm,
)


class VllmCutlassScaledInt8MM(ScaledInt8MMKernel):
    """vLLM's CUTLASS int8 × int8 GEMM with a fused epilogue (CUDA, per-channel scales).

    ``ops`` replaces vLLM's ops (tests emulate them on CPU); by default they
    are looked up with :meth:`VllmInt8Ops.from_vllm`.
    """

    name = "vllm_cutlass"
    device_types = frozenset({"cuda"})

    @classmethod
    def is_supported(cls, device_type: str) -> tuple[bool, str | None]:
        if device_type != "cuda":
            return False, "vLLM's CUTLASS int8 GEMM is a CUDA kernel"
        reason = int8_ops_unavailable_reason()
        return (reason is None), reason

    @classmethod
    def can_implement(cls, config: ScaledInt8MMConfig) -> tuple[bool, str | None]:
        if config.group_size:
            return False, "per-group weight scales are not supported"
        if config.out_dtype is None:
            return False, "the layer did not give its output dtype (bf16/fp16 only)"
        if config.out_dtype not in CUTLASS_OUT_DTYPES:
            return False, f"writes bf16/fp16 only, not {config.out_dtype}"
        if config.in_features % CUTLASS_ALIGNMENT or config.out_features % CUTLASS_ALIGNMENT:
            return False, f"needs K and N multiples of {CUTLASS_ALIGNMENT}"
        return True, None

    def __init__(self, config, weight, weight_scale, int_bias=None, *, ops: VllmInt8Ops | None = None):
        super().__init__(config, weight, weight_scale, int_bias)
        self._ops = ops if ops is not None else VllmInt8Ops.from_vllm()
        device = self.weight.device
        self.register_buffer(
            "unit_scale", torch.ones(1, dtype=torch.float32, device=device), persistent=False
        )
        azp_adj = None if self.int_bias is None else (-self.int_bias).contiguous()
        self.register_buffer("azp_adj", azp_adj, persistent=False)

    def forward(self, x_q, x_scale, bias, out_dtype):  # noqa: D102
        if out_dtype not in CUTLASS_OUT_DTYPES:
            raise ValueError(f"{self.name} writes bf16/fp16 only, not {out_dtype}")
        scale_a = (
            self.unit_scale if x_scale is None else x_scale.to(torch.float32).reshape(-1, 1).contiguous()
        )
        if bias is not None:
            bias = bias.to(out_dtype).contiguous()
        return scaled_mm(
            self._ops,
            x_q.contiguous(),
            self.weight.t(),
            scale_a,
            self.weight_scale,
            out_dtype,
            bias,
            self.azp_adj,
        )
