"""A dynamic int8 linear layer in one call: per-token int8 quantization of ``x`` and the int8 GEMM together.

The math is W8A8_DYNAMIC's (spec §4.2)::

    s_x[m] = max_k |x[m, k]| / 127,   x_q = round(x / s_x)
    y[m, n] = (Σ_k x_q[m, k] · W_q[n, k]) · s_x[m] · s_w[n] (+ bias[n])

which the dynamic schemes otherwise compute with two kernels, an activation
quantizer (:mod:`~vllm_modelslim.kernels.activation_quantizers`) and a scaled
int8 GEMM (:mod:`~vllm_modelslim.kernels.scaled_int8_mm`). Priority list:
:class:`VllmCpuInt8ScaledMMWithQuant`, then :class:`QuantizerAndGemm`, the
reference: never built; choosing it keeps that two-kernel path (the oracle the
fused kernel is tested against).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm_modelslim.kernels.base import QuantKernel, channel_vector, register_buffers
from vllm_modelslim.kernels.selection import choose_kernel, priority_list
from vllm_modelslim.kernels.vllm_cpu_sgl import VllmCpuSglInt8Mixin


@dataclass(frozen=True)
class DynamicInt8LinearConfig:
    """What a dynamic int8 linear layer asks of a fused kernel.

    Attributes:
        device_type: where the activations live.
        activation_dtype: the layer's activation dtype.
        in_features: K.
        out_features: N (this rank's).
        rank_row_max: the per-token scales span tensor-parallel ranks (row-parallel layer, tp > 1).
    """

    device_type: str
    activation_dtype: torch.dtype
    in_features: int
    out_features: int
    rank_row_max: bool = False


class DynamicInt8LinearKernel(QuantKernel):
    """``forward(x [M, K], bias [N] | None) -> [M, N]`` in ``x.dtype``."""


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


class QuantizerAndGemm(DynamicInt8LinearKernel):
    """The reference: an activation quantizer kernel and a scaled int8 GEMM kernel (never built here).

    Choosing it leaves the scheme on its two-kernel path, which runs every configuration.
    """

    name = "quantizer_and_gemm"


DYNAMIC_INT8_LINEAR_KERNELS: list[type[DynamicInt8LinearKernel]] = priority_list(
    VllmCpuInt8ScaledMMWithQuant,
    QuantizerAndGemm,
)
"""Priority order; the two-kernel path always qualifies."""


def make_dynamic_int8_linear(
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    activation_dtype: torch.dtype,
    rank_row_max: bool = False,
    label: str | None = None,
) -> DynamicInt8LinearKernel | None:
    """The fused kernel for this layer, or None when the two-kernel path is the choice (logged).

    Args:
        weight: int8 (or int4-valued) ``[N, K]``.
        weight_scale: per-output-channel float ``[N]`` or ``[N, 1]``.
        activation_dtype: the layer's activation dtype.
        rank_row_max: the layer's per-token scales span tensor-parallel ranks.
        label: what the layer is, for the selection log line.

    Raises:
        ValueError: ``VLLM_MODELSLIM_DISABLED_KERNELS`` is invalid, or the scale is not per channel.
    """
    if weight_scale.numel() != weight.shape[0]:
        raise ValueError(f"per-channel scales expected: {weight_scale.numel()} for {weight.shape[0]} rows")
    config = DynamicInt8LinearConfig(
        device_type=weight.device.type,
        activation_dtype=activation_dtype,
        in_features=weight.shape[1],
        out_features=weight.shape[0],
        rank_row_max=rank_row_max,
    )
    purpose = "dynamic int8 linear, activation quantization and GEMM in one call"
    cls = choose_kernel(DYNAMIC_INT8_LINEAR_KERNELS, config, f"{label} ({purpose})" if label else purpose)
    return None if cls is QuantizerAndGemm else cls(config, weight, weight_scale)
