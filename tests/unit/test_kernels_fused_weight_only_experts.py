"""The fused W8A16 experts kernel against the float64 spec and against the per-expert path.

The oracle is the W8A16 MoE math (``W = (q − z)·s`` per channel for each projection, SwiGLU,
routing-weighted sum) in float64. The fused kernel keeps gate/up and the down outputs in float32
where the per-expert path rounds them to bf16, so it is held to the per-expert path's own distance
from that oracle, in bf16, on the same inputs; mutations (another expert, a wrong slot weight, a
dropped zero point) must move it far from the oracle.
"""

import pytest
import torch

from moe_test_context import moe_test_context
from vllm_modelslim.kernels.fused_weight_only_experts import (
    PANEL_ROWS_PER_EXPERT,
    FusedWeightOnlyExpertsConfig,
    Int8VnniFusedWeightOnlyExperts,
    make_fused_weight_only_experts,
)
from vllm_modelslim.kernels.grouped_experts import grouped_experts_forward, swiglu
from vllm_modelslim.kernels.selection import DISABLED_KERNELS_ENV
from vllm_modelslim.kernels.weight_only import weight_only_int8_reference
from vllm_modelslim.schemes.moe.base import W2, W13
from vllm_modelslim.schemes.moe.schemes import W8A16MoEScheme

ISA_MISSING = Int8VnniFusedWeightOnlyExperts.is_supported("cpu")[1]
WHY_NOT = ISA_MISSING or Int8VnniFusedWeightOnlyExperts.ops_reason()[1]
needs_kernel = pytest.mark.skipif(WHY_NOT is not None, reason=f"cpu_int8_vnni_w8a16_moe: {WHY_NOT}")


def random_experts(num: int, hidden: int, inter: int, seed: int = 0, zero_points: bool = True):
    """int8 experts, per-channel scales and integer zero points (or None), as W8A16 checkpoints hold them."""
    g = torch.Generator().manual_seed(seed)

    def projection(n: int, k: int):
        q = torch.randint(-128, 128, (num, n, k), generator=g, dtype=torch.int8)
        scale = torch.rand(num, n, generator=g) * 1e-3 + 1e-4
        zero = torch.randint(-20, 21, (num, n), generator=g).float() if zero_points else None
        return q, scale, zero

    return (*projection(2 * inter, hidden), *projection(hidden, inter))


def routing(tokens: int, num: int, top_k: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    weights, ids = torch.rand(tokens, num, generator=g).topk(top_k, dim=-1)
    return weights / weights.sum(dim=-1, keepdim=True), ids


def dequantized(q, scale, zero):
    w = q.double() if zero is None else q.double() - zero.double()[..., None]
    return w * scale.double()[..., None]


def spec_float64(x, topk_weights, topk_ids, w13, s13, z13, w2, s2, z2) -> torch.Tensor:
    """The routed W8A16 experts in float64."""
    w13_f, w2_f = dequantized(w13, s13, z13), dequantized(w2, s2, z2)
    out = torch.zeros(x.shape, dtype=torch.float64)
    for t in range(x.shape[0]):
        for j in range(topk_ids.shape[1]):
            e = int(topk_ids[t, j])
            gate, up = (x[t].double() @ w13_f[e].T).chunk(2)
            out[t] += float(topk_weights[t, j]) * ((torch.nn.functional.silu(gate) * up) @ w2_f[e].T)
    return out


def per_expert_path(x, topk_weights, topk_ids, w13, s13, z13, w2, s2, z2) -> torch.Tensor:
    """The MoE scheme's per-expert path with reference weight-only kernels, in ``x.dtype``."""

    def expert(e):
        def forward(rows):
            zero13, zero2 = (None if z is None else z[e] for z in (z13, z2))
            hidden = swiglu(weight_only_int8_reference(rows, w13[e], s13[e], zero13), rows.dtype)
            return weight_only_int8_reference(hidden, w2[e], s2[e], zero2)

        return forward

    return grouped_experts_forward(x, topk_weights, topk_ids, [expert(e) for e in range(w13.shape[0])])


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b).norm() / b.norm())


def fused_kernel(weights, hidden: int, inter: int):
    config = FusedWeightOnlyExpertsConfig("cpu", torch.bfloat16, hidden, inter)
    return make_fused_weight_only_experts(config, *weights)


@needs_kernel
@pytest.mark.parametrize("zero_points", [True, False])
@pytest.mark.parametrize(
    "num,hidden,inter,top_k,tokens",
    [
        (8, 256, 128, 2, 1),
        (8, 256, 128, 2, 3),  # rows of an expert in blocks of 1..4
        (8, 256, 128, 2, 40),
        (8, 256, 128, 2, 70),  # 17.5 rows per expert: expert by expert with the panel GEMM where it runs
        (32, 2048, 768, 4, 1),  # moe-large's shape
        (32, 2048, 768, 4, 33),
    ],
)
def test_fused_kernel_is_as_close_to_the_spec_as_the_per_expert_path(
    zero_points, num, hidden, inter, top_k, tokens
):
    weights = random_experts(num, hidden, inter, zero_points=zero_points)
    x = torch.randn(tokens, hidden, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    topk_weights, topk_ids = routing(tokens, num, top_k)
    kernel = fused_kernel(weights, hidden, inter)
    oracle = spec_float64(x, topk_weights, topk_ids, *weights)
    per_expert_error = relative_error(per_expert_path(x, topk_weights, topk_ids, *weights), oracle)
    routes = [False, True] if kernel.panel_gemm else [False]  # the limb op; the panel GEMM per expert
    for kernel.panel_gemm in routes:
        fused = kernel(x, topk_weights, topk_ids)
        assert fused.dtype == torch.bfloat16 and fused.shape == x.shape
        fused_error = relative_error(fused, oracle)
        print(f"\nrelative error vs float64 spec: fused {fused_error:.2e}, per-expert {per_expert_error:.2e}")
        assert fused_error <= 1.2 * per_expert_error and fused_error < 1e-2


@needs_kernel
def test_fused_kernel_uses_each_expert_its_zero_points_and_routing_weight():
    """Mutations the oracle must catch: another expert's weights, the wrong slot's weight, no zero points."""
    num, hidden, inter = 4, 64, 32
    weights = random_experts(num, hidden, inter, seed=3)
    x = torch.randn(2, hidden, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    topk_weights = torch.tensor([[0.9, 0.1], [0.7, 0.3]])
    topk_ids = torch.tensor([[0, 3], [2, 1]])
    fused = fused_kernel(weights, hidden, inter)(x, topk_weights, topk_ids)
    oracle = spec_float64(x, topk_weights, topk_ids, *weights)
    assert relative_error(fused, oracle) < 1e-2
    for wrong in (
        spec_float64(x, topk_weights, topk_ids.roll(1, dims=0), *weights),
        spec_float64(x, topk_weights.flip(-1), topk_ids, *weights),
        spec_float64(x, topk_weights, topk_ids, *weights[:2], None, *weights[3:5], None),
    ):
        assert relative_error(fused, wrong) > 0.1


@needs_kernel
def test_the_intermediate_size_split_over_two_ranks_sums_to_the_layer():
    """Tensor parallelism: each rank holds gate/up rows and the down projection's K-slice of every
    expert; the zero-point term is linear in the slice, so the ranks' outputs add up to the layer."""
    num, hidden, inter = 4, 128, 64
    w13, s13, z13, w2, s2, z2 = random_experts(num, hidden, inter, seed=9)
    x = torch.randn(6, hidden, generator=torch.Generator().manual_seed(10)).to(torch.bfloat16)
    topk_weights, topk_ids = routing(6, num, 2)
    total = torch.zeros(x.shape, dtype=torch.float64)
    for rank in range(2):
        rows = torch.arange(rank * inter // 2, (rank + 1) * inter // 2)
        gate_up = torch.cat([rows, rows + inter])  # this rank's gate rows, then its up rows
        share = (w13[:, gate_up], s13[:, gate_up], z13[:, gate_up], w2[:, :, rows].contiguous(), s2, z2)
        total += fused_kernel(share, hidden, inter // 2)(x, topk_weights, topk_ids).double()
    oracle = spec_float64(x, topk_weights, topk_ids, w13, s13, z13, w2, s2, z2)
    assert relative_error(total, oracle) < 1e-2


@needs_kernel
def test_many_rows_per_expert_run_expert_by_expert_with_the_panel_gemm():
    """From PANEL_ROWS_PER_EXPERT rows per expert on average the panel GEMM runs each expert (where it
    runs); below, the limb op runs the layer in one call."""
    num, hidden, inter, top_k = 4, 64, 32, 2
    kernel = fused_kernel(random_experts(num, hidden, inter, seed=11), hidden, inter)
    if not kernel.panel_gemm:
        pytest.skip("no AVX512-BF16 panel GEMM here (or an AMX CPU)")
    calls = []
    kernel._panel_experts = [lambda rows, e=e: (calls.append(e), rows)[1] for e in range(num)]
    threshold = PANEL_ROWS_PER_EXPERT * num // top_k
    for tokens, panel in ((threshold - 1, False), (threshold, True)):
        x = torch.randn(tokens, hidden, generator=torch.Generator().manual_seed(12)).to(torch.bfloat16)
        calls.clear()
        kernel(x, *routing(tokens, num, top_k))
        assert bool(calls) is panel


@pytest.mark.parametrize(
    "change,why",
    [
        (dict(activation_dtype=torch.float32), "bf16 activations only"),
        (dict(intermediate_size=40), "multiples of 16"),
        (dict(expert_map=True), "no expert parallelism"),
        (dict(router_weight_on_input=True), "applied to the output only"),
    ],
)
def test_layers_it_cannot_run_are_refused(change, why):
    config = FusedWeightOnlyExpertsConfig(
        **{
            **dict(device_type="cpu", activation_dtype=torch.bfloat16, hidden_size=64, intermediate_size=32),
            **change,
        }
    )
    ok, reason = Int8VnniFusedWeightOnlyExperts.can_implement(config)
    assert not ok and why in reason


def test_stacked_shapes_are_checked_before_packing():
    w13, s13, z13, w2, s2, z2 = random_experts(2, 64, 32)
    config = FusedWeightOnlyExpertsConfig("cpu", torch.bfloat16, 64, 32)
    with pytest.raises(ValueError, match=r"w2_zero has shape \(2, 32\), expected \(2, 64\)"):
        make_fused_weight_only_experts(config, w13, s13, z13, w2, s2, z2[:, :32])


# --- the W8A16 MoE scheme builds one fused kernel instead of per-expert kernels ---------------------


def w8a16_moe_layer(weights, dtype: torch.dtype):
    """A stand-in FusedMoE layer of W8A16 experts (stacked checkpoint parameters), loaded and processed."""
    w13, s13, z13, w2, s2, z2 = weights
    num = w13.shape[0]
    scheme = W8A16MoEScheme(moe_test_context("W8A16", num))
    scheme.prepare_experts(list(range(num)))
    layer = torch.nn.Module()
    for name, weight, scale, zero in ((W13, w13, s13, z13), (W2, w2, s2, z2)):
        tensors = {"weight": weight, "weight_scale": scale.unsqueeze(-1), "weight_offset": zero.unsqueeze(-1)}
        for suffix, tensor in tensors.items():
            setattr(layer, f"{name}_{suffix}", torch.nn.Parameter(tensor.clone(), requires_grad=False))
    inter = w2.shape[2]
    layer.modelslim_widths = {W13: [inter, inter], W2: [w13.shape[2]]}
    layer.modelslim_params_dtype = dtype
    scheme.process_weights_after_loading(layer)
    return scheme, layer


@needs_kernel
def test_bf16_w8a16_moe_layer_runs_one_fused_kernel(monkeypatch):
    weights = random_experts(8, 128, 64, seed=5)
    x = torch.randn(5, 128, generator=torch.Generator().manual_seed(6)).to(torch.bfloat16)
    topk_weights, topk_ids = routing(5, 8, 2)
    scheme, layer = w8a16_moe_layer(weights, torch.bfloat16)
    assert isinstance(layer.modelslim_fused_experts, Int8VnniFusedWeightOnlyExperts)
    assert layer.modelslim_experts is None
    assert not [name for name, _ in layer.named_parameters()]  # the stacked checkpoint tensors are freed
    fused = scheme.apply(layer, x, topk_weights, topk_ids)

    monkeypatch.setenv(DISABLED_KERNELS_ENV, Int8VnniFusedWeightOnlyExperts.name)
    scheme, layer = w8a16_moe_layer(weights, torch.bfloat16)
    assert layer.modelslim_fused_experts is None and len(layer.modelslim_experts) == 8
    per_expert = scheme.apply(layer, x, topk_weights, topk_ids)
    oracle = spec_float64(x, topk_weights, topk_ids, *weights)
    assert relative_error(fused, oracle) <= 1.2 * relative_error(per_expert, oracle)


def test_float32_w8a16_moe_layer_keeps_per_expert_kernels():
    weights = random_experts(4, 64, 32, seed=7)
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(8))
    topk_weights, topk_ids = routing(3, 4, 2)
    scheme, layer = w8a16_moe_layer(weights, torch.float32)
    assert layer.modelslim_fused_experts is None and len(layer.modelslim_experts) == 4
    out = scheme.apply(layer, x, topk_weights, topk_ids)
    assert relative_error(out, spec_float64(x, topk_weights, topk_ids, *weights)) < 1e-3
