"""The mixed fused-layer method (plugin/mixed_linear_method.py) with vLLM's real parameter classes, per rank.

A fused q/k/v layer with a FLOAT q, a W8A8_DYNAMIC k and a W8A16 v, and a
gate/up layer with a static W8A8 gate and a FLOAT up, are built for every rank
of tensor parallelism 1, 2 and 4 (4 ranks replicate the 2 KV heads, as vLLM
does), loaded tensor by tensor through the routing parameters with vLLM's shard
ids, and run: the output must be this rank's rows of each shard's own result
(the plain-torch reference math of ``reference/quantized_linear.py``, float
``x·Wᵀ`` for FLOAT shards), concatenated in shard order.
"""

from __future__ import annotations

import pytest
import torch

from vllm_modelslim.format.description import QuantDescription
from vllm_modelslim.format.errors import CheckpointTensorError
from vllm_modelslim.plugin.mixed_linear_method import ModelSlimMixedLinearMethod
from vllm_modelslim.reference.quantized_linear import ReferenceQuantizedLinear
from vllm_modelslim.schemes import LayerContext
from vllm_modelslim.schemes.registry import require_scheme_class

K = 32
HEAD_DIM, HEADS, KV_HEADS = 8, 4, 2
FILE = "/ckpt/quant_model_description.json"
ATTN = "model.layers.0.self_attn"
MLP = "model.layers.0.mlp"


@pytest.fixture(autouse=True)
def no_process_group(monkeypatch):
    """vLLM's parameter classes read the rank at construction; the method sets the layer's rank on them."""
    import vllm.model_executor.parameter as vllm_parameter

    monkeypatch.setattr(vllm_parameter, "get_tensor_model_parallel_rank", lambda: 0)
    monkeypatch.setattr(vllm_parameter, "get_tensor_model_parallel_world_size", lambda: 1)


def int8_weight(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(-127, 128, (n, K), dtype=torch.int8, generator=g)


def shard_tensors(quant_type: str, n: int, seed: int) -> dict[str, torch.Tensor]:
    """One shard's checkpoint tensors, as msmodelslim stores them."""
    g = torch.Generator().manual_seed(seed)
    if quant_type == "FLOAT":
        return {"weight": (torch.randn(n, K, generator=g) * 0.1).to(torch.bfloat16)}
    weight = int8_weight(n, g)
    scale = torch.rand(n, 1, generator=g) * 0.01 + 0.001
    if quant_type == "W8A8_DYNAMIC":
        return {"weight": weight, "weight_scale": scale, "weight_offset": torch.zeros(n, 1)}
    if quant_type == "W8A16":
        offset = torch.randint(-4, 5, (n, 1), generator=g).to(torch.float32)
        return {"weight": weight, "weight_scale": scale, "weight_offset": offset}
    assert quant_type == "W8A8"
    input_scale, input_offset = torch.tensor([0.03]), torch.tensor([3.0])
    quant_bias = (-3 * weight.to(torch.int32).sum(dim=1)).to(torch.int32)
    return {
        "weight": weight,
        "quant_bias": quant_bias,
        "input_scale": input_scale,
        "input_offset": input_offset,
        "deq_scale": (input_scale * scale.reshape(-1)).to(torch.float32),
    }


def reference_output(quant_type: str, tensors: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    if quant_type == "FLOAT":
        return x @ tensors["weight"].to(torch.float32).T
    return ReferenceQuantizedLinear(quant_type, tensors)(x)


# (layer, shard names, vLLM shard ids, quant types, full N per shard)
QKV_SIZES = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM)
QKV = (
    f"{ATTN}.qkv_proj",
    ("q_proj", "k_proj", "v_proj"),
    ("q", "k", "v"),
    ("FLOAT", "W8A8_DYNAMIC", "W8A16"),
    QKV_SIZES,
)
GATE_UP = (f"{MLP}.gate_up_proj", ("gate_proj", "up_proj"), (0, 1), ("W8A8", "FLOAT"), (48, 48))


def build(fused, tp: int, rank: int):
    """(layer, method, stored tensors per shard, rows of each shard this rank keeps)."""
    prefix, names, shard_ids, quant_types, sizes = fused
    head = prefix.rpartition(".")[0]
    entries = {f"{head}.{name}.weight": qt for name, qt in zip(names, quant_types, strict=True)}
    description = QuantDescription.from_mapping(entries, FILE)
    schemes = [
        None
        if qt == "FLOAT"
        else require_scheme_class(qt, "linear", layer=prefix, file=FILE)(
            LayerContext(f"{head}.{name}", qt, (f"{head}.{name}",), description)
        )
        for name, qt in zip(names, quant_types, strict=True)
    ]
    replicas = max(1, tp // KV_HEADS)
    rows = []
    for shard_id, n in zip(shard_ids, sizes, strict=True):
        if shard_id in ("k", "v") and tp > KV_HEADS:  # one KV head per rank, replicated
            width, start = HEAD_DIM, (rank // replicas) * HEAD_DIM
        else:
            width = n // tp
            start = rank * width
        rows.append(slice(start, start + width))
    layer = torch.nn.Module()
    layer.tp_rank, layer.tp_size, layer.num_kv_head_replicas = rank, tp, replicas
    method = ModelSlimMixedLinearMethod(prefix, schemes, FILE)
    widths = [r.stop - r.start for r in rows]
    method.create_weights(layer, K, widths, K, sum(widths), torch.float32, weight_loader=None)
    stored = [shard_tensors(qt, n, seed) for seed, (qt, n) in enumerate(zip(quant_types, sizes, strict=True))]
    return layer, method, stored, rows


def load(layer, fused, stored) -> None:
    """What vLLM's model loader does: ``params[fused name].weight_loader(param, tensor, shard_id)``."""
    for shard_id, tensors in zip(fused[2], stored, strict=True):
        for suffix, tensor in tensors.items():
            param = getattr(layer, suffix)
            param.weight_loader(param, tensor, shard_id)


@pytest.mark.parametrize("fused", [QKV, GATE_UP], ids=["qkv", "gate_up"])
@pytest.mark.parametrize(("tp", "rank"), [(1, 0), (2, 1), (4, 2), (4, 3)])
def test_each_rank_runs_its_rows_of_every_shard(fused, tp, rank):
    layer, method, stored, rows = build(fused, tp, rank)
    load(layer, fused, stored)
    method.process_weights_after_loading(layer)
    assert len(layer.modelslim_shards) == len(fused[1])
    assert all(p.numel() == 0 for p in layer.parameters(recurse=False))  # the fused names only route
    x = torch.randn(5, K, generator=torch.Generator().manual_seed(7))
    bias = torch.randn(sum(r.stop - r.start for r in rows), generator=torch.Generator().manual_seed(8))
    y = method.apply(layer, x, bias)
    expected, start = [], 0
    for qt, tensors, r in zip(fused[3], stored, rows, strict=True):
        part = reference_output(qt, tensors, x)[:, r]
        width = r.stop - r.start
        if qt != "W8A8":  # static W8A8 folds the float bias into quant_bias (ERRATA 2): not added again
            part = part + bias[start : start + width]
        expected.append(part)
        start += width
    torch.testing.assert_close(y, torch.cat(expected, dim=-1), rtol=1e-4, atol=1e-4)


def test_a_tensor_for_a_shard_whose_type_has_none_names_layer_and_file():
    layer, _, stored, _ = build(QKV, 1, 0)
    with pytest.raises(CheckpointTensorError, match="'weight_scale' for shard 'q'") as info:
        layer.weight_scale.weight_loader(layer.weight_scale, stored[1]["weight_scale"], "q")
    assert info.value.layer == QKV[0] and info.value.file == FILE


def test_a_fused_tensor_without_shard_id_is_refused():
    layer, _, stored, _ = build(GATE_UP, 1, 0)
    with pytest.raises(CheckpointTensorError, match="shard id None"):
        layer.weight.weight_loader(layer.weight, torch.cat([stored[0]["weight"]] * 2), None)


def test_vllm_and_the_description_disagree_on_the_shard_count():
    layer, method, _, _ = build(GATE_UP, 1, 0)
    with pytest.raises(CheckpointTensorError, match="from 3 shard"):
        method.create_weights(torch.nn.Module(), K, [16, 16, 16], K, 48, torch.float32, weight_loader=None)
