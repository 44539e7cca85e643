"""The fused int8 experts kernel against the spec's float64 math and against the per-expert path.

The oracle is the routed-experts formula of the dynamic int8 MoE schemes
(spec §4.2/§4.11) evaluated in float64 with exact per-token quantization. The
fused kernel rounds differently in places (documented on
:class:`VllmCpuFusedInt8Experts`), so it is held to the per-expert path's own
distance from that oracle, in bf16, on the same inputs.
"""

import pytest
import torch

from moe_test_context import moe_test_context
from vllm_modelslim.kernels import quantize_dynamic_per_token, scaled_int8_mm_reference
from vllm_modelslim.kernels.cpu_int4_vnni import int4_vnni_unavailable
from vllm_modelslim.kernels.fused_int8_experts import (
    FusedInt8ExpertsConfig,
    Int4VnniFusedExperts,
    VllmCpuFusedInt8Experts,
    choose_fused_int8_experts,
    make_fused_int8_experts,
)
from vllm_modelslim.kernels.grouped_experts import grouped_experts_forward, swiglu
from vllm_modelslim.kernels.selection import DISABLED_KERNELS_ENV
from vllm_modelslim.schemes.moe.base import W2, W13
from vllm_modelslim.schemes.moe.schemes import W8A8DynamicMoEScheme

FUSED_HERE, WHY_NOT = VllmCpuFusedInt8Experts.is_supported("cpu")
needs_fused = pytest.mark.skipif(not FUSED_HERE, reason=f"fused int8 MoE kernel: {WHY_NOT}")
WHY_NOT_INT4 = int4_vnni_unavailable()  # the ISA, then the C++ build
INT4_HERE = WHY_NOT_INT4 is None
needs_int4 = pytest.mark.skipif(not INT4_HERE, reason=f"int4 MoE kernel: {WHY_NOT_INT4}")


def random_experts(num: int, hidden: int, inter: int, seed: int = 0, bits: int = 8):
    g = torch.Generator().manual_seed(seed)
    low, high = (-127, 128) if bits == 8 else (-8, 8)
    return (
        torch.randint(low, high, (num, 2 * inter, hidden), generator=g, dtype=torch.int8),
        torch.rand(num, 2 * inter, generator=g) * 1e-2 + 1e-3,
        torch.randint(low, high, (num, hidden, inter), generator=g, dtype=torch.int8),
        torch.rand(num, hidden, generator=g) * 1e-2 + 1e-3,
    )


def routing(tokens: int, num: int, top_k: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    weights, ids = torch.rand(tokens, num, generator=g).topk(top_k, dim=-1)
    return weights / weights.sum(dim=-1, keepdim=True), ids


def spec_float64(x, topk_weights, topk_ids, w13, s13, w2, s2) -> torch.Tensor:
    """The routed experts in float64: exact per-token quantization, float64 SwiGLU and combine."""

    def quantize(a):
        scale = a.abs().amax(dim=-1, keepdim=True) / 127
        return torch.round(a / scale), scale

    out = torch.zeros(x.shape, dtype=torch.float64)
    for t in range(x.shape[0]):
        for j in range(topk_ids.shape[1]):
            e = int(topk_ids[t, j])
            q, s = quantize(x[t : t + 1].double())
            gate, up = ((q @ w13[e].double().t()) * s * s13[e].double()).chunk(2, dim=-1)
            q, s = quantize(torch.nn.functional.silu(gate) * up)
            out[t] += float(topk_weights[t, j]) * ((q @ w2[e].double().t()) * s * s2[e].double())[0]
    return out


def per_expert_path(x, topk_weights, topk_ids, w13, s13, w2, s2) -> torch.Tensor:
    """The MoE schemes' per-expert path with reference kernels, in ``x.dtype``."""

    def expert(e):
        def forward(rows):
            q, s = quantize_dynamic_per_token(rows)
            hidden = swiglu(scaled_int8_mm_reference(q, s, w13[e], s13[e]).to(rows.dtype), rows.dtype)
            q, s = quantize_dynamic_per_token(hidden)
            return scaled_int8_mm_reference(q, s, w2[e], s2[e]).to(rows.dtype)

        return forward

    return grouped_experts_forward(x, topk_weights, topk_ids, [expert(e) for e in range(w13.shape[0])])


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b).norm() / b.norm())


SHAPES = [
    (8, 256, 128, 2, 1),
    (8, 256, 128, 2, 3),
    (8, 256, 128, 2, 40),  # > 4 rows per expert: the int8 op's batch-reduce GEMM branch; > 8: int4 row blocks
    (32, 2048, 768, 4, 1),  # moe-large's shape, K = 2048 deep int32 sums
    (32, 2048, 768, 4, 64),
]
KERNELS = [
    pytest.param(VllmCpuFusedInt8Experts, 8, marks=needs_fused, id="vllm_int8"),
    pytest.param(VllmCpuFusedInt8Experts, 4, marks=needs_fused, id="vllm_int8_int4_values"),
    pytest.param(Int4VnniFusedExperts, 4, marks=needs_int4, id="int4_vnni"),
]


@pytest.mark.parametrize("kernel_class,bits", KERNELS)
@pytest.mark.parametrize("num,hidden,inter,top_k,tokens", SHAPES)
def test_fused_kernel_is_as_close_to_the_spec_as_the_per_expert_path(
    kernel_class, bits, num, hidden, inter, top_k, tokens
):
    weights = random_experts(num, hidden, inter, bits=bits)
    x = torch.randn(tokens, hidden, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    topk_weights, topk_ids = routing(tokens, num, top_k)
    config = FusedInt8ExpertsConfig("cpu", torch.bfloat16, hidden, inter, weight_bits=bits)
    kernel = make_fused_int8_experts(config, *weights, kernel=kernel_class)
    fused = kernel(x, topk_weights, topk_ids)
    assert fused.dtype == torch.bfloat16 and fused.shape == x.shape
    oracle = spec_float64(x, topk_weights, topk_ids, *weights)
    per_expert = per_expert_path(x, topk_weights, topk_ids, *weights)
    fused_error, per_expert_error = relative_error(fused, oracle), relative_error(per_expert, oracle)
    print(f"\nrelative error vs float64 spec: fused {fused_error:.2e}, per-expert {per_expert_error:.2e}")
    assert fused_error <= 1.2 * per_expert_error and fused_error < 1.5e-2


@pytest.mark.parametrize("kernel_class,bits", KERNELS)
def test_fused_kernel_uses_each_expert_and_routing_weight(kernel_class, bits):
    """Mutations the oracle must catch: another expert's weights or the weights of the wrong slot."""
    num, hidden, inter = 4, 64, 32
    weights = random_experts(num, hidden, inter, seed=3, bits=bits)
    x = torch.randn(2, hidden, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    topk_weights = torch.tensor([[0.9, 0.1], [0.7, 0.3]])
    topk_ids = torch.tensor([[0, 3], [2, 1]])
    config = FusedInt8ExpertsConfig("cpu", torch.bfloat16, hidden, inter, weight_bits=bits)
    kernel = make_fused_int8_experts(config, *weights, kernel=kernel_class)
    fused = kernel(x, topk_weights, topk_ids)
    oracle = spec_float64(x, topk_weights, topk_ids, *weights)
    assert relative_error(fused, oracle) < 1e-2
    for wrong_weights, wrong_ids in ((topk_weights.flip(-1), topk_ids), (topk_weights, (topk_ids + 1) % num)):
        assert relative_error(fused, spec_float64(x, wrong_weights, wrong_ids, *weights)) > 0.1


@pytest.mark.parametrize(
    "change,why",
    [
        (dict(activation_dtype=torch.float32), "bf16 activations only"),
        (dict(hidden_size=48), "multiples of 32"),
        (dict(expert_map=True), "expert parallelism"),
        (dict(router_weight_on_input=True), "output only"),
        (dict(row_exchange=True), "tensor-parallel"),
    ],
)
def test_layers_the_fused_kernel_cannot_run_keep_the_per_expert_path(change, why):
    config = FusedInt8ExpertsConfig(**{**dict(device_type="cpu", activation_dtype=torch.bfloat16,
                                              hidden_size=64, intermediate_size=32), **change})  # fmt: skip
    ok, reason = VllmCpuFusedInt8Experts.can_implement(config)
    assert not ok and why in reason
    assert choose_fused_int8_experts(config) is None


def test_the_fused_kernel_is_chosen_where_it_runs_unless_disabled(monkeypatch):
    config = FusedInt8ExpertsConfig("cpu", torch.bfloat16, 64, 32)
    int4 = FusedInt8ExpertsConfig("cpu", torch.bfloat16, 64, 32, weight_bits=4)
    assert choose_fused_int8_experts(config) is (VllmCpuFusedInt8Experts if FUSED_HERE else None)
    int8_or_none = VllmCpuFusedInt8Experts if FUSED_HERE else None
    assert choose_fused_int8_experts(int4) is (Int4VnniFusedExperts if INT4_HERE else int8_or_none)
    monkeypatch.setenv(DISABLED_KERNELS_ENV, f"{VllmCpuFusedInt8Experts.name},{Int4VnniFusedExperts.name}")
    assert choose_fused_int8_experts(config) is None and choose_fused_int8_experts(int4) is None


@pytest.mark.parametrize(
    "change,why",
    [
        (dict(weight_bits=8), "int4 experts only"),
        (dict(activation_dtype=torch.float32), "bf16 activations only"),
        (dict(hidden_size=40), "multiples of 16"),
        (dict(expert_map=True), "expert parallelism"),
        (dict(router_weight_on_input=True), "output only"),
        (dict(row_exchange=True), "tensor-parallel"),
    ],
)
def test_layers_the_int4_kernel_cannot_run_are_refused(change, why):
    base = dict(device_type="cpu", activation_dtype=torch.bfloat16, hidden_size=64, intermediate_size=32)
    config = FusedInt8ExpertsConfig(**{**base, "weight_bits": 4, **change})
    ok, reason = Int4VnniFusedExperts.can_implement(config)
    assert not ok and why in reason


@needs_int4
def test_int4_kernel_keeps_half_a_byte_per_weight_and_rejects_int8_values():
    weights = random_experts(2, 64, 32, bits=4)
    config = FusedInt8ExpertsConfig("cpu", torch.bfloat16, 64, 32, weight_bits=4)
    kernel = make_fused_int8_experts(config, *weights, kernel=Int4VnniFusedExperts)
    assert (
        kernel.w13_packed.numel() + kernel.w2_packed.numel() == (weights[0].numel() + weights[2].numel()) // 2
    )
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        make_fused_int8_experts(config, *random_experts(2, 64, 32, bits=8), kernel=Int4VnniFusedExperts)


@needs_fused
def test_stacked_shapes_are_checked_before_packing():
    w13, s13, w2, s2 = random_experts(2, 64, 32)
    config = FusedInt8ExpertsConfig("cpu", torch.bfloat16, 64, 32)
    with pytest.raises(ValueError, match=r"w2_scale has shape \(2, 32\), expected \(2, 64\)"):
        make_fused_int8_experts(config, w13, s13, w2, s2[:, :32])
    with pytest.raises(RuntimeError, match="bf16 activations only"):
        make_fused_int8_experts(FusedInt8ExpertsConfig("cpu", torch.float16, 64, 32), w13, s13, w2, s2)


# --- the MoE scheme builds one fused kernel instead of per-expert kernels ---------------------------


def w8a8_dynamic_moe_layer(weights, dtype: torch.dtype):
    """A stand-in FusedMoE layer of W8A8_DYNAMIC experts (stacked parameters), loaded and processed."""
    w13, s13, w2, s2 = weights
    num, hidden, inter = w13.shape[0], w13.shape[2], w2.shape[2]
    context = moe_test_context("W8A8_DYNAMIC", num)
    scheme = W8A8DynamicMoEScheme(context)
    scheme.prepare_experts(list(range(num)))
    layer = torch.nn.Module()
    for name, weight, scale in ((W13, w13, s13), (W2, w2, s2)):
        tensors = {
            "weight": weight,
            "weight_scale": scale.unsqueeze(-1),
            "weight_offset": torch.zeros_like(scale),
        }
        for suffix, tensor in tensors.items():
            setattr(layer, f"{name}_{suffix}", torch.nn.Parameter(tensor.clone(), requires_grad=False))
    layer.modelslim_widths = {W13: [inter, inter], W2: [hidden]}
    layer.modelslim_params_dtype = dtype
    scheme.process_weights_after_loading(layer)
    return scheme, layer


@needs_fused
def test_bf16_w8a8_dynamic_moe_layer_runs_one_fused_kernel(monkeypatch):
    weights = random_experts(8, 128, 64, seed=5)
    x = torch.randn(5, 128, generator=torch.Generator().manual_seed(6)).to(torch.bfloat16)
    topk_weights, topk_ids = routing(5, 8, 2)
    scheme, layer = w8a8_dynamic_moe_layer(weights, torch.bfloat16)
    assert isinstance(layer.modelslim_fused_experts, VllmCpuFusedInt8Experts)
    assert layer.modelslim_experts is None
    assert not [name for name, _ in layer.named_parameters()]  # the stacked checkpoint tensors are freed
    fused = scheme.apply(layer, x, topk_weights, topk_ids)

    monkeypatch.setenv(DISABLED_KERNELS_ENV, VllmCpuFusedInt8Experts.name)
    scheme, layer = w8a8_dynamic_moe_layer(weights, torch.bfloat16)
    assert layer.modelslim_fused_experts is None and len(layer.modelslim_experts) == 8
    per_expert = scheme.apply(layer, x, topk_weights, topk_ids)
    oracle = spec_float64(x, topk_weights, topk_ids, *weights)
    assert relative_error(fused, oracle) <= 1.2 * relative_error(per_expert, oracle)


def test_float32_moe_layer_keeps_per_expert_kernels():
    weights = random_experts(4, 64, 32, seed=7)
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(8))
    topk_weights, topk_ids = routing(3, 4, 2)
    scheme, layer = w8a8_dynamic_moe_layer(weights, torch.float32)
    assert layer.modelslim_fused_experts is None and len(layer.modelslim_experts) == 4
    out = scheme.apply(layer, x, topk_weights, topk_ids)
    assert relative_error(out, spec_float64(x, topk_weights, topk_ids, *weights)) < 1e-3
