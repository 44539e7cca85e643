"""Grouped routed-experts kernel against its per-(token, slot) loop oracle."""

import pytest
import torch
from kernel_bounds import assert_within, routed_experts_expectation

from vllm_modelslim.kernels import quantize_dynamic_per_token, scaled_int8_mm_reference
from vllm_modelslim.kernels.grouped_experts import (
    _two_stage_dense,
    grouped_experts_forward,
    grouped_experts_reference,
    grouped_experts_two_stage,
    swiglu,
)


def make_experts(num_experts: int, hidden: int, seed: int = 0):
    """Row-wise quantized experts: per-token int8 activations × int8 weights (like W8A8_DYNAMIC)."""
    generator = torch.Generator().manual_seed(seed)
    experts = []
    for _ in range(num_experts):
        weight = torch.randint(-127, 128, (hidden, hidden), generator=generator, dtype=torch.int8)
        scale = torch.rand(hidden, generator=generator) * 1e-3 + 1e-4

        def forward(x, weight=weight, scale=scale):
            x_q, x_scale = quantize_dynamic_per_token(x)
            return scaled_int8_mm_reference(x_q, x_scale, weight, scale).to(x.dtype)

        experts.append(forward)
    return experts


def routing(tokens: int, top_k: int, num_experts: int, seed: int = 1, dtype=torch.int64):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(num_experts, generator=generator)[:top_k] for _ in range(tokens)])
    weights = torch.rand(tokens, top_k, generator=generator)
    return weights / weights.sum(dim=1, keepdim=True), ids.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ids_dtype", [torch.int32, torch.int64])
def test_grouped_matches_loop_reference(dtype, ids_dtype):
    experts = make_experts(6, 32)
    x = torch.randn(17, 32).to(dtype)
    weights, ids = routing(17, 2, 6, dtype=ids_dtype)
    ids[ids == 5] = 4  # expert 5 gets no token
    ids[3] = torch.tensor([4, 1])
    got = grouped_experts_forward(x, weights, ids, experts)
    want = grouped_experts_reference(x, weights, ids, experts)
    assert got.dtype == dtype
    exact, bound = routed_experts_expectation(x, weights, ids, experts)
    assert_within(got, exact, bound)  # fp32 combine, one rounding to the activation dtype (kernel_bounds)
    assert torch.equal(want, exact.to(dtype))  # the reference: the exact sum, rounded once
    # routing actually matters: a different assignment gives a different result
    shuffled = grouped_experts_forward(x, weights, ids.flip(1), experts)
    assert not torch.allclose(shuffled.float(), got.float(), atol=1e-3)


def test_experts_of_other_ranks_are_skipped():
    experts = make_experts(3, 16)
    x = torch.randn(9, 16)
    weights, ids = routing(9, 2, 6)
    expert_map = torch.tensor([-1, 0, -1, 1, 2, -1])  # global → local, −1 elsewhere
    got = grouped_experts_forward(x, weights, ids, experts, expert_map=expert_map)
    want = grouped_experts_reference(x, weights, ids, experts, expert_map=expert_map)
    exact, bound = routed_experts_expectation(x, weights, ids, experts, expert_map)
    assert_within(got, exact, bound)
    assert torch.equal(want, exact.to(x.dtype))
    local_rows = (expert_map[ids] >= 0).any(dim=1)
    assert torch.all(got[~local_rows] == 0)


def test_router_weight_on_input_for_top1():
    generator = torch.Generator().manual_seed(2)
    w13 = [torch.randn(16, 32, generator=generator) for _ in range(4)]
    experts = [lambda x, w=w: swiglu(x @ w, x.dtype) for w in w13]  # SwiGLU: not homogeneous
    x = torch.randn(7, 16)
    weights, ids = routing(7, 1, 4)
    weights = weights * 0.5  # renormalized top-1 weights would all be 1
    got = grouped_experts_forward(x, weights, ids, experts, apply_router_weight_on_input=True)
    want = grouped_experts_reference(x, weights, ids, experts, apply_router_weight_on_input=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    on_output = grouped_experts_forward(x, weights, ids, experts)
    assert not torch.allclose(got, on_output, atol=1e-4)


def test_swiglu_is_silu_of_gate_times_up_in_float32():
    gate_up = torch.randn(5, 8, dtype=torch.bfloat16)
    gate, up = gate_up.float()[:, :4], gate_up.float()[:, 4:]
    want = (gate * torch.sigmoid(gate) * up).to(torch.bfloat16)
    assert torch.equal(swiglu(gate_up, torch.bfloat16), want)


# --- two stages around one layer-wide exchange ------------------------------------------------


class StagedExpert:
    """A toy two-stage expert: ``first`` a float projection, ``second`` quantizes with given row maxima."""

    def __init__(self, hidden: int, inter: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.up = torch.randn(inter, hidden, generator=g) * 0.2
        self.down = torch.randint(-127, 128, (hidden, inter), generator=g, dtype=torch.int8)
        self.scale = torch.rand(hidden, generator=g) * 1e-3 + 1e-4

    def first(self, x):
        return (x.float() @ self.up.T).to(x.dtype)

    def second(self, hidden, row_max):
        x_q, x_scale = quantize_dynamic_per_token(hidden, row_max_reduce=lambda local: row_max)
        return scaled_int8_mm_reference(x_q, x_scale, self.down, self.scale).to(hidden.dtype)

    def __call__(self, x):  # the one-stage expert: its own row maxima
        return self.second(self.first(x), self.first(x).float().abs().amax(-1))


def local_max_exchange(calls: list):
    def exchange(hidden, slots, num_slots):
        calls.append((hidden.shape[0], num_slots))
        return hidden.float().abs().amax(-1)

    return exchange


@pytest.mark.parametrize("on_input", [False, True])
def test_two_stage_with_local_maxima_equals_the_one_stage_forward(on_input):
    experts = [StagedExpert(16, 24, seed) for seed in range(5)]
    x = torch.randn(11, 16)
    weights, ids = routing(11, 2, 5)
    expert_map = torch.tensor([0, 1, 2, -1, 3, 4, -1])  # 7 global experts, 2 on other ranks
    ids = torch.where(ids >= 3, ids + 1, ids)
    calls = []
    got = grouped_experts_two_stage(
        x, weights, ids, experts, local_max_exchange(calls), expert_map, apply_router_weight_on_input=on_input
    )
    want = grouped_experts_forward(
        x, weights, ids, experts, expert_map, apply_router_weight_on_input=on_input
    )
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert len(calls) == 1 and calls[0][1] == 11 * 2  # one exchange for the layer, over T·k slots


@pytest.mark.parametrize("on_input", [False, True])
def test_two_stage_capturable_path_equals_the_grouped_one(on_input):
    # The path taken while a CUDA graph is captured (every local expert on every row), run on CPU.
    experts = [StagedExpert(16, 24, seed) for seed in range(4)]
    x = torch.randn(9, 16)
    weights, ids = routing(9, 2, 6)
    expert_map = torch.tensor([0, -1, 1, 2, -1, 3])
    calls = []
    dense = _two_stage_dense(x, weights, ids, experts, local_max_exchange(calls), expert_map, on_input)
    grouped = grouped_experts_two_stage(
        x, weights, ids, experts, local_max_exchange([]), expert_map, apply_router_weight_on_input=on_input
    )
    torch.testing.assert_close(dense, grouped)
    assert calls == [(4 * 9, 4 * 9)]  # one exchange over every (expert, token) slot


def test_two_stage_exchange_runs_once_when_no_row_is_routed_here():
    experts = [StagedExpert(8, 12, seed) for seed in range(2)]
    x = torch.randn(3, 8)
    weights, ids = routing(3, 2, 4)
    calls = []
    expert_map = torch.tensor([-1, -1, -1, -1, 0, 1])  # this rank's experts 4 and 5 get no token
    out = grouped_experts_two_stage(x, weights, ids, experts, local_max_exchange(calls), expert_map)
    assert calls == [(0, 3 * 2)] and torch.equal(out, torch.zeros_like(x))


def test_two_stage_exchange_sees_every_routed_row_at_its_slot():
    experts = [StagedExpert(8, 12, seed) for seed in range(4)]
    x = torch.randn(5, 8)
    weights, ids = routing(5, 2, 4)
    seen = {}

    def exchange(hidden, slots, num_slots):
        for row, slot in zip(hidden, slots.tolist(), strict=True):
            seen[slot] = row
        return hidden.float().abs().amax(-1)

    grouped_experts_two_stage(x, weights, ids, experts, exchange)
    assert sorted(seen) == list(range(10))
    for slot, row in seen.items():
        token, j = divmod(slot, 2)
        torch.testing.assert_close(row, experts[int(ids[token, j])].first(x[token : token + 1])[0])
