"""Tensor-parallel shares of static and dynamic W8A8 on CPU without vLLM: the ranks sum to the unsplit layer.

A row-parallel layer (o_proj, down_proj, the experts' w2) runs on K-slices and
vLLM sums the ranks' outputs. Static W8A8's int32 ``quant_bias`` folds
``−input_offset·Σ_k W_q`` over the full K (plus the float bias), so it must enter
the sum exactly once (``schemes/linear/w8a8.rank_quant_bias``). These tests split
real scheme instances the way vLLM's loaders do (row-parallel: the weight's
columns, every ``[N]`` vector whole; column-parallel: the rows and the ``[N]``
vectors) and compare the sum with the unsplit layer and with the float64
reference (``reference/quantized_linear.py``), with a non-zero activation offset.

Dynamic per-token schemes take each row's scale over the full row under tensor
parallelism: the plugin gives row-parallel layers a combine of the ranks' row
maxima (``plugin/row_max_reduce.py``). The last test simulates two ranks with a
gather of both ranks' maxima and finds the unsplit layer (and, without the
combine, not).
"""

from __future__ import annotations

import threading

import pytest
import torch

from moe_test_context import moe_test_context
from vllm_modelslim.format.description import QuantDescription
from vllm_modelslim.reference.quantized_linear import ReferenceQuantizedLinear
from vllm_modelslim.schemes.base import LayerContext
from vllm_modelslim.schemes.linear.w8a8 import W8A8StaticLinearScheme, rank_quant_bias
from vllm_modelslim.schemes.linear.w8a8_dynamic import W8A8DynamicLinearScheme
from vllm_modelslim.schemes.moe.base import W2, W13, ExpertProjection
from vllm_modelslim.schemes.moe.schemes import W8A8DynamicMoEScheme, W8A8StaticMoEScheme

PREFIX = "model.layers.0.self_attn.o_proj"
INPUT_SCALE, INPUT_OFFSET = 0.04, -9.0


def _static_tensors(n: int, k: int, seed: int) -> dict[str, torch.Tensor]:
    """One static W8A8 shard as msmodelslim writes it (float bias folded into quant_bias)."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    deq_scale = INPUT_SCALE * (torch.rand(n, generator=g) * 0.01 + 0.002)
    bias = torch.randn(n, generator=g)
    quant_bias = torch.round(bias / deq_scale) - INPUT_OFFSET * weight.to(torch.float64).sum(dim=1)
    return {
        "weight": weight,
        "quant_bias": quant_bias.to(torch.int32),
        "input_scale": torch.tensor([INPUT_SCALE]),
        "input_offset": torch.tensor([INPUT_OFFSET]),
        "deq_scale": deq_scale.to(torch.float32),
    }


def _scheme(row_parallel: bool) -> W8A8StaticLinearScheme:
    description = QuantDescription.from_mapping({f"{PREFIX}.weight": "W8A8"}, "quant_model_description.json")
    context = LayerContext(PREFIX, "W8A8", (PREFIX,), description, row_parallel=row_parallel)
    return W8A8StaticLinearScheme(context)


def _run(tensors: dict[str, torch.Tensor], x: torch.Tensor, row_parallel: bool, tp_rank: int) -> torch.Tensor:
    """The scheme's output for one rank's tensors (``ExpertProjection`` stands in for the vLLM layer)."""
    scheme = _scheme(row_parallel)
    layer = ExpertProjection(dict(tensors), [tensors["weight"].shape[0]], torch.float32, tp_rank=tp_rank)
    scheme.check_values(layer)
    scheme.process_weights_after_loading(layer)
    return scheme.apply(layer, x, None)


def _row_slices(tensors: dict[str, torch.Tensor], k: int, tp: int) -> list[dict[str, torch.Tensor]]:
    """Each rank's tensors of a row-parallel layer: weight columns sliced, the [N] vectors whole."""
    part = k // tp
    return [{**tensors, "weight": tensors["weight"][:, r * part : (r + 1) * part]} for r in range(tp)]


@pytest.mark.parametrize("tp", [2, 4])
def test_row_parallel_ranks_sum_to_the_unsplit_layer(tp):
    n, k = 24, 96
    tensors = _static_tensors(n, k, seed=tp)
    x = torch.randn(5, k, generator=torch.Generator().manual_seed(1))
    unsplit = _run(tensors, x, row_parallel=True, tp_rank=0)
    reference = ReferenceQuantizedLinear("W8A8", tensors)(x.double())
    torch.testing.assert_close(unsplit.double(), reference, rtol=1e-5, atol=1e-5)

    part = k // tp
    outputs = [
        _run(share, x[:, r * part : (r + 1) * part], row_parallel=True, tp_rank=r)
        for r, share in enumerate(_row_slices(tensors, k, tp))
    ]
    torch.testing.assert_close(torch.stack(outputs).sum(0), unsplit, rtol=1e-5, atol=1e-5)

    # Adding quant_bias on every rank counts it tp times: far from the layer (what the rule prevents).
    twice = sum(
        _run(share, x[:, r * part : (r + 1) * part], True, 0)
        for r, share in enumerate(_row_slices(tensors, k, tp))
    )
    excess = (tp - 1) * tensors["quant_bias"].double() * tensors["deq_scale"].double()
    torch.testing.assert_close((twice - unsplit).double(), excess.expand_as(unsplit), rtol=1e-4, atol=1e-4)
    assert float(excess.abs().max()) > 1.0


def test_column_parallel_ranks_keep_their_bias_slices():
    n, k, tp = 24, 64, 2
    tensors = _static_tensors(n, k, seed=7)
    x = torch.randn(3, k, generator=torch.Generator().manual_seed(2))
    part = n // tp
    outputs = []
    for r in range(tp):
        rows = slice(r * part, (r + 1) * part)
        share = {**tensors, **{s: tensors[s][rows] for s in ("weight", "quant_bias", "deq_scale")}}
        outputs.append(_run(share, x, row_parallel=False, tp_rank=r))
    reference = ReferenceQuantizedLinear("W8A8", tensors)(x.double())
    torch.testing.assert_close(torch.cat(outputs, dim=-1).double(), reference, rtol=1e-5, atol=1e-5)


def test_rank_quant_bias_rule():
    bias = torch.arange(4, dtype=torch.int32)
    assert rank_quant_bias(bias, row_parallel=True, tp_rank=0) is bias
    assert rank_quant_bias(bias, row_parallel=True, tp_rank=1) is None
    assert rank_quant_bias(bias, row_parallel=False, tp_rank=1) is bias


# --- static experts: the intermediate size split over the MoE ranks ---------------------------


def _expert_layer(w13: dict, w2: dict, hidden: int, inter: int) -> torch.nn.Module:
    """A stand-in for vLLM's FusedMoE layer holding one expert's stacked parameters ``[1, ...]``."""
    layer = torch.nn.Module()
    for name, tensors in ((W13, w13), (W2, w2)):
        for suffix, tensor in tensors.items():
            setattr(layer, f"{name}_{suffix}", torch.nn.Parameter(tensor.unsqueeze(0), requires_grad=False))
    layer.modelslim_widths = {W13: [inter, inter], W2: [hidden]}
    layer.modelslim_params_dtype = torch.float32
    return layer


def _moe_expert(w13: dict, w2: dict, hidden: int, inter: int, tp_rank: int) -> torch.nn.Module:
    context = moe_test_context("W8A8", 1)
    scheme = W8A8StaticMoEScheme(context)
    scheme.prepare_experts([0], tp_rank=tp_rank)
    layer = _expert_layer(w13, w2, hidden, inter)
    scheme.process_weights_after_loading(layer)
    return layer.modelslim_experts[0]


def _w13_share(gate: dict, up: dict, rows: slice) -> dict[str, torch.Tensor]:
    """A rank's fused gate/up tensors: its rows of each, per-shard scalars kept per shard."""
    share = {s: torch.cat([gate[s][rows], up[s][rows]]) for s in ("weight", "quant_bias", "deq_scale")}
    share["input_scale"] = torch.cat([gate["input_scale"], up["input_scale"]])
    share["input_offset"] = torch.cat([gate["input_offset"], up["input_offset"]])
    return share


def test_static_expert_split_over_ranks_sums_to_the_whole_expert():
    hidden, inter, tp = 32, 48, 2
    gate, up, down = (
        _static_tensors(inter, hidden, 11),
        _static_tensors(inter, hidden, 12),
        _static_tensors(hidden, inter, 13),
    )
    x = torch.randn(6, hidden, generator=torch.Generator().manual_seed(3))
    whole = _moe_expert(_w13_share(gate, up, slice(None)), down, hidden, inter, tp_rank=0)(x)

    gate_ref, up_ref = ReferenceQuantizedLinear("W8A8", gate), ReferenceQuantizedLinear("W8A8", up)
    activation = torch.nn.functional.silu(gate_ref(x.double())) * up_ref(x.double())
    reference = ReferenceQuantizedLinear("W8A8", down)(activation)
    torch.testing.assert_close(whole.double(), reference, rtol=1e-3, atol=1e-3)

    part = inter // tp
    outputs = []
    for r in range(tp):
        rows = slice(r * part, (r + 1) * part)
        w2 = {**down, "weight": down["weight"][:, rows]}
        outputs.append(_moe_expert(_w13_share(gate, up, rows), w2, hidden, part, tp_rank=r)(x))
    torch.testing.assert_close(torch.stack(outputs).sum(0), whole, rtol=1e-5, atol=1e-5)


# --- dynamic per-token scales over the full row ---------------------------------------------------


def _dynamic_tensors(n: int, k: int, seed: int) -> dict[str, torch.Tensor]:
    """One W8A8_DYNAMIC shard: int8 weight, per-channel scale, zero offsets."""
    g = torch.Generator().manual_seed(seed)
    return {
        "weight": torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8),
        "weight_scale": torch.rand(n, 1, generator=g) * 0.01 + 0.001,
        "weight_offset": torch.zeros(n, 1),
    }


def _run_dynamic(tensors: dict[str, torch.Tensor], x: torch.Tensor, tp_rank: int, reduce) -> torch.Tensor:
    """W8A8_DYNAMIC on one rank's tensors, with ``reduce`` as the layer's row-maximum combine."""
    description = QuantDescription.from_mapping(
        {f"{PREFIX}.weight": "W8A8_DYNAMIC"}, "quant_model_description.json"
    )
    scheme = W8A8DynamicLinearScheme(
        LayerContext(PREFIX, "W8A8_DYNAMIC", (PREFIX,), description, row_parallel=True)
    )
    layer = ExpertProjection(
        dict(tensors), [tensors["weight"].shape[0]], torch.float32, tp_rank=tp_rank, row_max_reduce=reduce
    )
    scheme.check_values(layer)
    scheme.process_weights_after_loading(layer)
    return scheme.apply(layer, x, None)


def _fake_gather_max(rank: int, all_local: list[torch.Tensor]):
    """What ``plugin/row_max_reduce.tensor_parallel_row_max`` does across real ranks: gather every
    rank's local maxima ``[T, 1]`` into ``[T, tp]`` (this rank's own value in its slot), then the maximum."""

    def reduce(local: torch.Tensor) -> torch.Tensor:
        columns = [local if r == rank else all_local[r] for r in range(len(all_local))]
        return torch.cat([c.unsqueeze(-1) for c in columns], dim=-1).amax(dim=-1)

    return reduce


@pytest.mark.parametrize("combine", [True, False], ids=["full_row_max", "mutation_per_rank_max"])
def test_row_parallel_dynamic_ranks_with_a_combined_row_max_equal_the_unsplit_layer(combine):
    n, k, tp = 24, 96, 2
    tensors = _dynamic_tensors(n, k, seed=3)
    x = torch.randn(6, k, generator=torch.Generator().manual_seed(2))
    x[:, : k // tp] *= 8.0  # the two halves' maxima differ: per-rank scales round differently
    unsplit = _run_dynamic(tensors, x, tp_rank=0, reduce=None)
    reference = ReferenceQuantizedLinear("W8A8_DYNAMIC", tensors)(x.double())
    torch.testing.assert_close(unsplit.double(), reference, rtol=1e-5, atol=1e-5)

    part = k // tp
    slices = [x[:, r * part : (r + 1) * part] for r in range(tp)]
    local = [s.float().abs().amax(dim=-1) for s in slices]
    outputs = [
        _run_dynamic(share, slices[r], tp_rank=r, reduce=_fake_gather_max(r, local) if combine else None)
        for r, share in enumerate(_row_slices(tensors, k, tp))
    ]
    total = sum(o.double() for o in outputs)
    if combine:
        # Same integers, same scales: only the float32 epilogue of each rank's partial sum differs.
        torch.testing.assert_close(total, reference, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(total, unsplit.double(), rtol=1e-5, atol=1e-5)
    else:
        assert not torch.allclose(total, reference, rtol=1e-5, atol=1e-5)


# --- dynamic experts: one combine of the row maxima per layer ------------------------------------


class ThreadGather:
    """Two "ranks" as threads: ``reduce(rank)`` gathers both ranks' maxima and takes the maximum (a
    collective: each call waits for the other rank's), counting the calls.

    A rank holds ``compute`` while it computes and lets go of it only inside the collective: real
    ranks are separate processes, while these threads share one process, and vLLM's CPU oneDNN GEMM
    keeps one scratchpad per process (``cpu_utils::ScratchPadManager``), so two threads in it at once
    overwrite each other's partial sums (a third of the runs differed by up to 251 before this lock).
    """

    def __init__(self, ranks: int):
        self.barrier = threading.Barrier(ranks, timeout=30)
        self.compute = threading.Lock()
        self.slots: list[torch.Tensor | None] = [None] * ranks
        self.calls = [0] * ranks

    def reduce(self, rank: int):
        def combine(local: torch.Tensor) -> torch.Tensor:
            self.calls[rank] += 1
            self.slots[rank] = local
            self.compute.release()
            self.barrier.wait()  # both ranks' maxima are in
            combined = torch.stack(self.slots).amax(dim=0)
            self.barrier.wait()  # both have read them
            self.compute.acquire()
            return combined

        return combine


def _dynamic_moe_layer(experts: list[tuple[dict, dict, dict]], hidden, inter, tp_rank, tp_size, reduce):
    """A stand-in FusedMoE layer of W8A8_DYNAMIC experts, this rank's intermediate slice of each."""
    context = moe_test_context("W8A8_DYNAMIC", len(experts))
    scheme = W8A8DynamicMoEScheme(context)
    scheme.prepare_experts(list(range(len(experts))), tp_rank, tp_size, reduce)
    part = inter // tp_size
    rows = slice(tp_rank * part, (tp_rank + 1) * part)
    layer = torch.nn.Module()
    for name, shares in (
        (W13, [{s: torch.cat([g[s][rows], u[s][rows]]) for s in g} for g, u, _ in experts]),
        (W2, [{**d, "weight": d["weight"][:, rows]} for _, _, d in experts]),
    ):
        for suffix in shares[0]:
            stacked = torch.stack([share[suffix] for share in shares])
            setattr(layer, f"{name}_{suffix}", torch.nn.Parameter(stacked, requires_grad=False))
    layer.modelslim_widths = {W13: [part, part], W2: [hidden]}
    layer.modelslim_params_dtype = torch.float32
    scheme.process_weights_after_loading(layer)
    return scheme, layer


def _run_ranks(experts, hidden, inter, x, weights, ids_per_rank, combine: bool):
    """Both ranks' outputs (threads, concurrently) and the gather's call counts."""
    gather = ThreadGather(2)
    outputs: list[torch.Tensor | None] = [None, None]

    def rank(r: int) -> None:
        reduce = gather.reduce(r) if combine else None
        with gather.compute:
            scheme, layer = _dynamic_moe_layer(experts, hidden, inter, r, 2, reduce)
            outputs[r] = scheme.apply(layer, x, weights, ids_per_rank[r])

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(o is not None for o in outputs), "a rank did not finish"
    return outputs, gather.calls


def _random_experts(num: int, hidden: int, inter: int):
    return [
        (
            _dynamic_tensors(inter, hidden, 40 + e),
            _dynamic_tensors(inter, hidden, 50 + e),
            _dynamic_tensors(hidden, inter, 60 + e),
        )
        for e in range(num)
    ]


@pytest.mark.parametrize("combine", [True, False], ids=["full_row_max", "mutation_per_rank_max"])
def test_dynamic_experts_split_over_ranks_with_one_combine_per_layer_equal_the_unsplit_layer(combine):
    hidden, inter, num, tokens = 32, 48, 4, 9
    experts = _random_experts(num, hidden, inter)
    g = torch.Generator().manual_seed(9)
    x = torch.randn(tokens, hidden, generator=g)
    ids = torch.stack([torch.randperm(num, generator=g)[:2] for _ in range(tokens)])
    weights = torch.rand(tokens, 2, generator=g)
    scheme, layer = _dynamic_moe_layer(experts, hidden, inter, 0, 1, None)
    unsplit = scheme.apply(layer, x, weights, ids)
    assert getattr(layer, "modelslim_row_exchange", None) is None  # tp=1: the one-stage path

    outputs, calls = _run_ranks(experts, hidden, inter, x, weights, [ids, ids], combine)
    total = outputs[0].double() + outputs[1].double()
    if combine:
        assert calls == [1, 1]  # one collective per layer on each rank, whatever the routing
        torch.testing.assert_close(total, unsplit.double(), rtol=1e-5, atol=1e-5)
    else:
        assert not torch.allclose(total, unsplit.double(), rtol=1e-5, atol=1e-5)


def test_ranks_routing_different_rows_still_pair_up_their_one_combine():
    # The per-expert combine of an earlier design deadlocked when the ranks' routing differed; the
    # layer-wide exchange has T·k slots on every rank, so the collective always pairs up.
    hidden, inter, num, tokens = 16, 32, 4, 5
    experts = _random_experts(num, hidden, inter)
    x = torch.randn(tokens, hidden)
    ids = torch.tensor([[0, 1]] * tokens)
    outputs, calls = _run_ranks(
        experts, hidden, inter, x, torch.ones(tokens, 2), [ids, ids.flip(0) + 2], True
    )
    assert calls == [1, 1]
