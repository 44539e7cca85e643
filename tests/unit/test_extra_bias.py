"""Stored float biases on layers vLLM builds without a bias (plugin/extra_bias.py), on vLLM's real layers.

msmodelslim's m4 smoothing stores ``<layer>.bias`` on q/k/v/gate/up of Qwen3,
whose vLLM layers have ``bias=False``. Real vLLM ``QKVParallelLinear``,
``MergedColumnParallelLinear`` and ``RowParallelLinear`` layers are built with
the plugin's methods (through a minimal quant config that hands them out),
loaded tensor by tensor through the parameters' own loaders with vLLM's shard
ids, and run through the layer's forward. Expected: the plain-torch reference
(``reference/quantized_linear.py``; float ``x·Wᵀ + b`` for FLOAT layers), with
the bias added exactly once: per column-parallel rank its slice of each shard's
bias, on a row-parallel layer only on rank 0, never on static W8A8 (folded
into ``quant_bias``).
"""

from __future__ import annotations

import pytest
import torch
import vllm.model_executor.layers.linear as vllm_linear
import vllm.model_executor.parameter as vllm_parameter
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig

from vllm_modelslim.format.description import QuantDescription
from vllm_modelslim.format.errors import CheckpointTensorError
from vllm_modelslim.plugin.extra_bias import EXTRA_BIAS_NAME, BiasedFloatLinearMethod, extra_bias_renames
from vllm_modelslim.plugin.linear_method import ModelSlimLinearMethod
from vllm_modelslim.plugin.mixed_linear_method import ModelSlimMixedLinearMethod
from vllm_modelslim.reference.quantized_linear import ReferenceQuantizedLinear
from vllm_modelslim.schemes import LayerContext
from vllm_modelslim.schemes.registry import require_scheme_class

K, HEAD_DIM, HEADS, KV_HEADS, INTER = 32, 8, 4, 2, 24
FILE = "/ckpt/quant_model_description.json"
ATTN, MLP = "model.layers.0.self_attn", "model.layers.0.mlp"


class MethodConfig(QuantizationConfig):
    """Hands vLLM's layer constructor the method under test (the plugin's config chooses it in the engine)."""

    def __init__(self, method):
        super().__init__()
        self.method = method

    def get_name(self):
        return "test"

    def get_supported_act_dtypes(self):
        return [torch.float32]

    @classmethod
    def get_min_capability(cls):
        return 0

    @staticmethod
    def get_config_filenames():
        return []

    @classmethod
    def from_config(cls, config):
        raise NotImplementedError

    def get_quant_method(self, layer, prefix):
        return self.method


@pytest.fixture
def ranks(monkeypatch):
    """``ranks(tp, rank)``: the tensor-parallel rank vLLM's layers and parameters read at construction."""

    def set_rank(tp: int, rank: int) -> None:
        for module in (vllm_linear, vllm_parameter):
            monkeypatch.setattr(module, "get_tensor_model_parallel_world_size", lambda: tp)
            monkeypatch.setattr(module, "get_tensor_model_parallel_rank", lambda: rank)

    return set_rank


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def float_tensors(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = gen(seed)
    return {"weight": torch.randn(n, K, generator=g) * 0.1, "bias": torch.randn(n, generator=g)}


def int8_tensors(quant_type: str, n: int, seed: int) -> dict[str, torch.Tensor]:
    """One quantized shard as msmodelslim stores it, with its float ``bias`` (static: in quant_bias)."""
    g = gen(seed)
    weight = torch.randint(-127, 128, (n, K), dtype=torch.int8, generator=g)
    scale = torch.rand(n, 1, generator=g) * 0.01 + 0.001
    bias = torch.randn(n, generator=g)
    if quant_type == "W8A8_DYNAMIC":
        return {"weight": weight, "weight_scale": scale, "weight_offset": torch.zeros(n, 1), "bias": bias}
    input_scale, input_offset = torch.tensor([0.03]), torch.tensor([3.0])
    deq_scale = (input_scale * scale.reshape(-1)).to(torch.float32)
    quant_bias = torch.round(bias / deq_scale) - input_offset * weight.to(torch.float64).sum(dim=1)
    return {
        "weight": weight,
        "quant_bias": quant_bias.to(torch.int32),
        "input_scale": input_scale,
        "input_offset": input_offset,
        "deq_scale": deq_scale,
        "bias": bias,
    }


def scheme(quant_type: str, prefix: str, shards: tuple[str, ...]):
    description = QuantDescription.from_mapping({f"{s}.weight": quant_type for s in shards}, FILE)
    cls = require_scheme_class(quant_type, "linear", layer=prefix, file=FILE)
    return cls(LayerContext(prefix, quant_type, shards, description))


def load(layer: torch.nn.Module, shard_id, tensors: dict[str, torch.Tensor]) -> None:
    """What vLLM's model loader does after the plugin's mapper renamed ``.bias`` to the extra bias."""
    for suffix, tensor in tensors.items():
        param = getattr(layer, EXTRA_BIAS_NAME if suffix == "bias" else suffix)
        param.weight_loader(param, tensor, *([] if shard_id is None else [shard_id]))


def forward(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    layer.quant_method.process_weights_after_loading(layer)
    output, returned_bias = layer(x)
    assert returned_bias is None
    return output


@pytest.mark.parametrize(("tp", "rank"), [(1, 0), (2, 0), (2, 1)])
def test_float_qkv_rank_adds_its_slice_of_every_shard_bias(ranks, tp, rank):
    ranks(tp, rank)
    layer = vllm_linear.QKVParallelLinear(
        K,
        HEAD_DIM,
        HEADS,
        KV_HEADS,
        bias=False,
        params_dtype=torch.float32,
        quant_config=MethodConfig(BiasedFloatLinearMethod(f"{ATTN}.qkv_proj", FILE)),
        prefix=f"{ATTN}.qkv_proj",
    )
    assert layer.bias is None
    shards = {"q": float_tensors(HEADS * HEAD_DIM, 1), "k": float_tensors(16, 2), "v": float_tensors(16, 3)}
    for shard_id, tensors in shards.items():
        load(layer, shard_id, tensors)
    x = torch.randn(5, K, generator=gen(9))
    expected = []
    for tensors in shards.values():
        rows = tensors["weight"].shape[0] // tp
        part = slice(rank * rows, (rank + 1) * rows)
        expected.append(x @ tensors["weight"][part].T + tensors["bias"][part])
    torch.testing.assert_close(forward(layer, x), torch.cat(expected, dim=-1), rtol=1e-5, atol=1e-5)


def test_row_parallel_bias_enters_once_on_rank_0(ranks):
    tp, n = 2, 24
    tensors = float_tensors(n, 4)
    x = torch.randn(5, K, generator=gen(9))
    outputs = []
    for rank in range(tp):
        ranks(tp, rank)
        layer = vllm_linear.RowParallelLinear(
            K,
            n,
            bias=False,
            params_dtype=torch.float32,
            reduce_results=False,
            quant_config=MethodConfig(BiasedFloatLinearMethod(f"{ATTN}.o_proj", FILE)),
            prefix=f"{ATTN}.o_proj",
        )
        load(layer, None, tensors)
        columns = slice(rank * K // tp, (rank + 1) * K // tp)
        out = forward(layer, x[:, columns])
        expected = x[:, columns] @ tensors["weight"][:, columns].T + (tensors["bias"] if rank == 0 else 0)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        outputs.append(out)
    torch.testing.assert_close(sum(outputs), x @ tensors["weight"].T + tensors["bias"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("quant_type", ["W8A8_DYNAMIC", "W8A8"])
def test_quantized_layer_gets_the_bias_by_its_scheme(ranks, quant_type):
    """Dynamic math adds the stored bias; static W8A8 must not (msmodelslim folded it into quant_bias)."""
    ranks(1, 0)
    shards = (f"{MLP}.gate_proj", f"{MLP}.up_proj")
    method = ModelSlimLinearMethod(scheme(quant_type, f"{MLP}.gate_up_proj", shards), extra_bias=True)
    layer = vllm_linear.MergedColumnParallelLinear(
        K,
        [INTER, INTER],
        bias=False,
        params_dtype=torch.float32,
        quant_config=MethodConfig(method),
        prefix=f"{MLP}.gate_up_proj",
    )
    stored = [int8_tensors(quant_type, INTER, seed) for seed in (5, 6)]
    for shard_id, tensors in enumerate(stored):
        load(layer, shard_id, tensors)
    x = torch.randn(5, K, generator=gen(9))
    expected = []
    for tensors in stored:
        quantized = {k: v for k, v in tensors.items() if k != "bias"}
        bias = tensors["bias"] if quant_type == "W8A8_DYNAMIC" else None
        expected.append(ReferenceQuantizedLinear(quant_type, quantized, bias)(x))
    torch.testing.assert_close(forward(layer, x), torch.cat(expected, dim=-1), rtol=1e-4, atol=1e-4)


def test_mixed_layer_adds_the_bias_to_its_float_shard_only(ranks):
    """Static W8A8 gate (bias folded) next to a FLOAT up (bias added) in one fused layer."""
    ranks(1, 0)
    gate = scheme("W8A8", f"{MLP}.gate_proj", (f"{MLP}.gate_proj",))
    method = ModelSlimMixedLinearMethod(f"{MLP}.gate_up_proj", [gate, None], FILE, extra_bias=True)
    layer = vllm_linear.MergedColumnParallelLinear(
        K,
        [INTER, INTER],
        bias=False,
        params_dtype=torch.float32,
        quant_config=MethodConfig(method),
        prefix=f"{MLP}.gate_up_proj",
    )
    gate_tensors, up_tensors = int8_tensors("W8A8", INTER, 7), float_tensors(INTER, 8)
    load(layer, 0, gate_tensors)
    load(layer, 1, up_tensors)
    x = torch.randn(5, K, generator=gen(9))
    static = ReferenceQuantizedLinear("W8A8", {k: v for k, v in gate_tensors.items() if k != "bias"})(x)
    expected = torch.cat([static, x @ up_tensors["weight"].T + up_tensors["bias"]], dim=-1)
    torch.testing.assert_close(forward(layer, x), expected, rtol=1e-4, atol=1e-4)


def test_a_stored_bias_that_never_arrived_names_layer_and_file(ranks):
    ranks(1, 0)
    prefix = f"{ATTN}.o_proj"
    layer = vllm_linear.RowParallelLinear(
        K,
        24,
        bias=False,
        params_dtype=torch.float32,
        quant_config=MethodConfig(BiasedFloatLinearMethod(prefix, FILE)),
        prefix=prefix,
    )
    load(layer, None, {"weight": float_tensors(24, 1)["weight"]})
    with pytest.raises(CheckpointTensorError, match="did not pass the stored bias") as info:
        layer.quant_method.process_weights_after_loading(layer)
    assert info.value.layer == prefix and info.value.file == FILE


def test_renames_use_vllm_module_path_and_checkpoint_shard_names():
    renames = extra_bias_renames(
        "language_model.model.layers.2.self_attn.qkv_proj", ("model.layers.2.self_attn.q_proj",)
    )
    assert renames == {
        "language_model.model.layers.2.self_attn.q_proj.bias": (
            f"language_model.model.layers.2.self_attn.q_proj.{EXTRA_BIAS_NAME}"
        )
    }
