"""Tensor-parallel shares of static W8A8, on CPU without vLLM: the ranks' outputs sum to the unsplit layer.

A row-parallel layer (o_proj, down_proj, the experts' w2) runs on K-slices and
vLLM sums the ranks' outputs. Static W8A8's int32 ``quant_bias`` folds
``−input_offset·Σ_k W_q`` over the full K (plus the float bias), so it must enter
the sum exactly once (``schemes/linear/w8a8.rank_quant_bias``). These tests split
real scheme instances the way vLLM's loaders do (row-parallel: the weight's
columns, every ``[N]`` vector whole; column-parallel: the rows and the ``[N]``
vectors) and compare the sum with the unsplit layer and with the float64
reference (``reference/quantized_linear.py``), with a non-zero activation offset;
and they check the reference's own K-split (``k_parts``), the oracle of the tp=2
engine tests.
"""

from __future__ import annotations

import pytest
import torch

from vllm_modelslim.format.description import QuantDescription
from vllm_modelslim.kernels.int4_packing import pack_int4_pairs
from vllm_modelslim.reference.quantized_linear import ReferenceQuantizedLinear
from vllm_modelslim.schemes.base import LayerContext
from vllm_modelslim.schemes.linear.w8a8 import W8A8StaticLinearScheme, rank_quant_bias
from vllm_modelslim.schemes.moe.base import W2, W13, ExpertProjection, MoEContext
from vllm_modelslim.schemes.moe.schemes import W8A8StaticMoEScheme

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
    prefix = "model.layers.0.mlp.experts"
    entries = {f"{prefix}.0.{p}.weight": "W8A8" for p in ("gate_proj", "up_proj", "down_proj")}
    context = MoEContext(
        prefix=prefix,
        quant_type="W8A8",
        checkpoint_prefix=prefix,
        projections=("gate_proj", "up_proj", "down_proj"),
        num_experts=1,
        description=QuantDescription.from_mapping(entries, "quant_model_description.json"),
    )
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


# --- the reference's K-split (the oracle of the tp=2 engine tests) ----------------------------


def test_reference_k_split_of_static_w8a8_equals_the_whole_layer():
    tensors = _static_tensors(16, 64, seed=5)
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(4)).double()
    whole = ReferenceQuantizedLinear("W8A8", tensors)(x)
    split = ReferenceQuantizedLinear("W8A8", tensors, k_parts=2)(x)
    torch.testing.assert_close(split, whole, rtol=1e-12, atol=1e-9)


def test_reference_k_split_of_per_group_w4a16_slices_the_groups():
    g = torch.Generator().manual_seed(6)
    n, k, group = 8, 64, 16
    values = torch.randint(-8, 8, (n, k), generator=g, dtype=torch.int8)
    scale = torch.rand(n, k // group, generator=g) + 0.5
    offset = torch.randint(-3, 4, (n, k // group), generator=g).float()
    tensors = {"weight": pack_int4_pairs(values, dim=0), "weight_scale": scale, "weight_offset": offset}
    x = torch.randn(3, k, generator=g).double()
    dequantized = (
        values.double() - offset.double().repeat_interleave(group, 1)
    ) * scale.double().repeat_interleave(group, 1)
    split = ReferenceQuantizedLinear("W4A16", tensors, k_parts=2)(x)
    torch.testing.assert_close(split, x @ dequantized.T, rtol=1e-12, atol=1e-9)


def test_reference_k_split_of_dynamic_activations_quantizes_each_slice():
    # Per-token scales over one rank's K-slice: the split differs from the whole layer, and equals
    # the sum of the two halves computed as separate layers (what each rank's vLLM layer computes).
    g = torch.Generator().manual_seed(8)
    weight = torch.randint(-127, 128, (8, 64), generator=g, dtype=torch.int8)
    tensors = {"weight": weight, "weight_scale": torch.rand(8, 1, generator=g) * 0.01 + 0.001}
    x = torch.randn(3, 64, generator=g).double()
    x[:, :32] *= 20  # one half dominates the per-token maximum
    halves = [
        ReferenceQuantizedLinear("W8A8_DYNAMIC", {**tensors, "weight": weight[:, r * 32 : (r + 1) * 32]})(
            x[:, r * 32 : (r + 1) * 32]
        )
        for r in range(2)
    ]
    split = ReferenceQuantizedLinear("W8A8_DYNAMIC", tensors, k_parts=2)(x)
    torch.testing.assert_close(split, halves[0] + halves[1], rtol=1e-12, atol=1e-9)
    whole = ReferenceQuantizedLinear("W8A8_DYNAMIC", tensors)(x)
    assert float((split - whole).abs().max()) > 1e-3
