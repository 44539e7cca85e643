"""A MoE layer's routed experts in one call: float activations × per-channel weight-only int8 experts.

The math every W8A16 MoE layer computes per routed (token ``t``, slot ``j``)
with expert ``e = topk_ids[t, j]`` (the W8A16 linear scheme per projection,
``W = (W_q − offset)·scale`` per output channel)::

    C = x[t] · W13_eᵀ                  [2I]  gate rows then up rows
    S = silu(C[:I]) · C[I:]            [I]   rounded to the activation dtype
    D = S · W2_eᵀ                      [H]
    out[t] = Σ_j topk_weights[t, j] · D_j

:func:`~vllm_modelslim.kernels.grouped_experts.grouped_experts_forward` computes
it with one weight-only kernel call per active expert and projection; at batch
1 that path spends more time in Python and torch dispatch than in the GEMMs. A
kernel of this family computes the whole layer in one call.

Priority list: :class:`Int8VnniFusedWeightOnlyExperts` (the project's AVX-512
VNNI op), then :class:`~vllm_modelslim.kernels.fused_int8_experts.PerExpertKernels`,
the reference: it is never built, and choosing it tells the MoE scheme to keep
its per-expert path.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from vllm_modelslim.kernels.base import QuantKernel, register_buffers
from vllm_modelslim.kernels.cpp_extension import CompiledCpuOpsMixin, require_cpu_ops
from vllm_modelslim.kernels.fused_int8_experts import PerExpertKernels, check_stacked_experts
from vllm_modelslim.kernels.grouped_experts import grouped_experts_forward, swiglu
from vllm_modelslim.kernels.scaled_int8_mm.cpu_int8_vnni import pack_int8_vnni
from vllm_modelslim.kernels.selection import choose_kernel, priority_list
from vllm_modelslim.kernels.weight_only import avx512_vnni_int8

PANEL_ROWS_PER_EXPERT = 16
"""From this many routed rows per expert on average (``T·top_k ≥ 16·E``), on CPUs where the W8A16
panel GEMM runs (AVX512-BF16 without AMX), the layer runs expert by expert with that GEMM instead of
the limb op (the measured crossover, :class:`Int8VnniFusedWeightOnlyExperts`)."""


@dataclass(frozen=True)
class FusedWeightOnlyExpertsConfig:
    """What a MoE layer of weight-only int8 experts asks of a fused kernel.

    Attributes:
        device_type: where the activations live ("cpu", "cuda").
        activation_dtype: the layer's activation dtype.
        hidden_size: H, the experts' input and output width.
        intermediate_size: I per expert on this rank (w13 has 2I rows).
        expert_map: experts are split over ranks (expert parallelism).
        router_weight_on_input: the routing weight scales the expert's input, not its output.
    """

    device_type: str
    activation_dtype: torch.dtype
    hidden_size: int
    intermediate_size: int
    expert_map: bool = False
    router_weight_on_input: bool = False


class FusedWeightOnlyExpertsKernel(QuantKernel):
    """``forward(x [T, H], topk_weights [T, k], topk_ids [T, k]) -> [T, H]`` in ``x.dtype``."""


class Int8VnniFusedWeightOnlyExperts(CompiledCpuOpsMixin, FusedWeightOnlyExpertsKernel):
    """The project's ``int8_weight_vnni_moe`` op (bf16 activations, AVX-512 VNNI).

    One call per layer (``kernels/csrc/int8_weight_vnni_linear.cpp``): each
    token is split once into the exact int8 limbs of
    :class:`~vllm_modelslim.kernels.weight_only.avx512_vnni_int8.Avx512VnniWeightOnlyInt8`'s
    few-rows op, its rows are grouped by expert, and one GEMM per active expert
    and projection multiplies them with the experts' int8 bytes (one byte per
    weight, never converted to float; exact int32 products). Gate and up stay
    float32 into the SwiGLU (the per-expert path rounds them to bf16 first),
    ``S`` is rounded to bf16 and split into limbs again, and the down
    projections' float32 outputs are combined in float32 with the routing
    weights and rounded once (the per-expert path rounds each expert's output
    first). The sigmoid's exponential is a degree-6 polynomial (relative error
    about 2e-7). Held to the float64 spec in ``tests/unit``: as close as the
    per-expert path or closer.

    Many rows (prefill): from :data:`PANEL_ROWS_PER_EXPERT` routed rows per
    expert on average, on CPUs where the W8A16 panel GEMM runs
    (``int8_weight_bf16_gemm``: AVX512-BF16 without AMX), the layer runs
    expert by expert with that GEMM on the same packed bytes (the per-expert
    path's numerics), since the limb products cost four ``vpdpbusd`` per row
    where the panel GEMM amortizes one conversion over all rows. Measured on
    moe-large's shapes (32 experts, H = 2048, I = 768, top-4, 2 threads, two
    weight copies cycled; 2-core AMD EPYC, AVX512-VNNI + AVX512-BF16, no AMX):
    T = 1, 0.83 ms against 1.53 ms per expert; T = 8,
    5.3 against 9.0 ms; T = 64, 18.7 against 25.7 ms; T = 128 (16 rows per
    expert), 38.9 against 37.8 ms; T = 512, 136 ms for the limb op against
    83 ms expert by expert.

    Keeps ``w13_packed`` uint8 ``[E, 2I/16, H/4, 64]`` and ``w2_packed`` uint8
    ``[E, H/16, I/4, 64]`` (``q + 128``), scales and zero points float32
    ``[E, 2I]`` / ``[E, H]``.
    """

    name = "cpu_int8_vnni_w8a16_moe"
    cpu_flags = avx512_vnni_int8.CPU_FLAGS
    ops_unavailable = staticmethod(avx512_vnni_int8.ops_unavailable)

    @classmethod
    def can_implement(cls, config: FusedWeightOnlyExpertsConfig) -> tuple[bool, str | None]:
        if config.activation_dtype != torch.bfloat16:
            return False, f"bf16 activations only, not {config.activation_dtype}"
        if config.hidden_size % 16 or config.intermediate_size % 16:
            return False, "hidden and intermediate sizes must be multiples of 16"
        if config.expert_map:
            return False, "no expert parallelism"
        if config.router_weight_on_input:
            return False, "the routing weight is applied to the output only"
        return cls.ops_reason()

    def __init__(
        self,
        config: FusedWeightOnlyExpertsConfig,
        w13: torch.Tensor,
        w13_scale: torch.Tensor,
        w13_zero: torch.Tensor | None,
        w2: torch.Tensor,
        w2_scale: torch.Tensor,
        w2_zero: torch.Tensor | None,
    ):
        super().__init__()
        require_cpu_ops(self.ops_unavailable())
        self.config = config

        def packed(w: torch.Tensor) -> torch.Tensor:  # int8 [E, N, K] → uint8 q + 128 [E, N/16, K/4, 64]
            return torch.stack([pack_int8_vnni(expert).view(torch.uint8) ^ 0x80 for expert in w])

        def channel(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(torch.float32).contiguous()

        register_buffers(
            self,
            w13_packed=packed(w13),
            w2_packed=packed(w2),
            w13_scale=channel(w13_scale),
            w2_scale=channel(w2_scale),
            w13_zero=channel(w13_zero),
            w2_zero=channel(w2_zero),
        )
        self.num_experts = w13.shape[0]
        self.panel_gemm = avx512_vnni_int8.panel_gemm_available()
        self._panel_experts = [functools.partial(self._panel_expert, e) for e in range(self.num_experts)]

    def _panel_expert(self, e: int, rows: torch.Tensor) -> torch.Tensor:
        """Expert ``e`` on its rows ``[M, H]`` with the W8A16 panel GEMM (many rows): ``[M, H]``."""
        gemm = torch.ops.vllm_modelslim.int8_weight_bf16_gemm

        def zero(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[e]

        gate_up = gemm(rows.contiguous(), self.w13_packed[e], self.w13_scale[e], zero(self.w13_zero), None)
        hidden = swiglu(gate_up, rows.dtype)
        return gemm(hidden.contiguous(), self.w2_packed[e], self.w2_scale[e], zero(self.w2_zero), None)

    def forward(  # noqa: D102
        self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor
    ) -> torch.Tensor:
        if self.panel_gemm and x.shape[0] * topk_ids.shape[1] >= PANEL_ROWS_PER_EXPERT * self.num_experts:
            return grouped_experts_forward(x, topk_weights, topk_ids, self._panel_experts)
        return torch.ops.vllm_modelslim.int8_weight_vnni_moe(
            x.contiguous(),
            self.w13_packed,
            self.w13_scale,
            self.w13_zero,
            self.w2_packed,
            self.w2_scale,
            self.w2_zero,
            topk_weights.to(torch.float32).contiguous(),
            topk_ids.to(torch.int64).contiguous(),
        )


FUSED_WEIGHT_ONLY_EXPERTS_KERNELS: list[type[QuantKernel]] = priority_list(
    Int8VnniFusedWeightOnlyExperts,
    PerExpertKernels,
)
"""Priority order; the per-expert path always qualifies."""


def choose_fused_weight_only_experts(
    config: FusedWeightOnlyExpertsConfig, label: str | None = None
) -> type[Int8VnniFusedWeightOnlyExperts] | None:
    """The fused kernel class for ``config``, or None when the per-expert path is the choice (logged).

    Raises:
        ValueError: ``VLLM_MODELSLIM_DISABLED_KERNELS`` is invalid.
    """
    purpose = "routed experts, weight-only per-channel int8"
    purpose = f"{label} ({purpose})" if label else purpose
    cls = choose_kernel(FUSED_WEIGHT_ONLY_EXPERTS_KERNELS, config, purpose)
    return None if cls is PerExpertKernels else cls


def make_fused_weight_only_experts(
    config: FusedWeightOnlyExpertsConfig,
    w13: torch.Tensor,
    w13_scale: torch.Tensor,
    w13_zero: torch.Tensor | None,
    w2: torch.Tensor,
    w2_scale: torch.Tensor,
    w2_zero: torch.Tensor | None,
    kernel: type[Int8VnniFusedWeightOnlyExperts] = Int8VnniFusedWeightOnlyExperts,
) -> Int8VnniFusedWeightOnlyExperts:
    """Build a fused kernel from stacked expert weights.

    Args:
        config: the layer (see :class:`FusedWeightOnlyExpertsConfig`).
        w13: int8 ``[E, 2I, H]``, gate rows then up rows.
        w13_scale, w13_zero: per-output-channel float ``[E, 2I]`` (zero points or None).
        w2: int8 ``[E, H, I]``.
        w2_scale, w2_zero: float ``[E, H]`` (zero points or None).
        kernel: the class :func:`choose_fused_weight_only_experts` returned.

    Raises:
        ValueError: the shapes disagree with ``config`` or with each other.
        RuntimeError: ``kernel`` cannot run ``config`` here.
    """
    experts, hidden, inter = w13.shape[0], config.hidden_size, config.intermediate_size
    expected = {
        "w13": (w13.shape, (experts, 2 * inter, hidden)),
        "w13_scale": (w13_scale.shape, (experts, 2 * inter)),
        "w2": (w2.shape, (experts, hidden, inter)),
        "w2_scale": (w2_scale.shape, (experts, hidden)),
    }
    if w13_zero is not None:
        expected["w13_zero"] = (w13_zero.shape, (experts, 2 * inter))
    if w2_zero is not None:
        expected["w2_zero"] = (w2_zero.shape, (experts, hidden))
    check_stacked_experts(kernel, config, expected)
    return kernel(config, w13, w13_scale, w13_zero, w2, w2_scale, w2_zero)
