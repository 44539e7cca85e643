"""The layer plan (format/layer_plan.py) on hand-built configs, descriptions and safetensors headers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiny_qwen3_shapes import PROJECTION_SIZES, tiny_qwen3_config
from vllm_modelslim.format import (
    CheckpointIndex,
    CheckpointTensorError,
    LayerNotDescribedError,
    QuantDescription,
    TensorInfo,
    UnknownQuantTypeError,
    UnusedDescriptionEntryError,
)
from vllm_modelslim.format.layer_plan import partition_errors, plan_layers

FOLDER = Path("/ckpt")
WEIGHTS = FOLDER / "quant_model_weights-00001-of-00001.safetensors"
DESCRIPTION = str(FOLDER / "quant_model_description.json")

# A 2-layer Qwen3-style model (tests/tiny_qwen3_shapes.py).
CONFIG = tiny_qwen3_config(2)
SIZES = PROJECTION_SIZES


def w8a8_dynamic(name: str, n: int, k: int) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    return {
        f"{name}.weight": (torch.int8, (n, k)),
        f"{name}.weight_scale": (torch.float32, (n, 1)),
        f"{name}.weight_offset": (torch.float32, (n, 1)),
    }


def w4a16(name: str, n: int, k: int, group: int = 16) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    return {
        f"{name}.weight": (torch.int8, (n // 2, k)),
        f"{name}.weight_scale": (torch.float32, (n, k // group)),
        f"{name}.weight_offset": (torch.float32, (n, k // group)),
    }


def floating(name: str, n: int, k: int) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    return {f"{name}.weight": (torch.bfloat16, (n, k))}


def dense_checkpoint(layers: int = 2, make=w8a8_dynamic, quant_type: str = "W8A8_DYNAMIC"):
    """(description entries, stored tensors) of a fully quantized dense model."""
    tensors: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {
        "model.embed_tokens.weight": (torch.bfloat16, (256, 64)),
        "lm_head.weight": (torch.bfloat16, (256, 64)),
    }
    entries = {"model.embed_tokens.weight": "FLOAT", "lm_head.weight": "FLOAT"}
    for layer in range(layers):
        for name, (n, k) in SIZES.items():
            stored = make(f"model.layers.{layer}.{name}", n, k)
            tensors.update(stored)
            entries.update(dict.fromkeys(stored, quant_type))
        for norm in ("input_layernorm", "post_attention_layernorm"):
            tensors[f"model.layers.{layer}.{norm}.weight"] = (torch.bfloat16, (64,))
            entries[f"model.layers.{layer}.{norm}.weight"] = "FLOAT"
    return entries, tensors


def index(tensors) -> CheckpointIndex:
    return CheckpointIndex(
        FOLDER,
        {
            name: TensorInfo(name, WEIGHTS, dtype, str(dtype), shape)
            for name, (dtype, shape) in tensors.items()
        },
    )


def plan(entries, tensors, config=CONFIG, **kwargs):
    description = QuantDescription.from_mapping(entries, source=DESCRIPTION)
    return plan_layers(config, description, index(tensors) if tensors is not None else None, **kwargs)


def kinds(layer_plan) -> list[tuple[str, str | None]]:
    return [(type(e).__name__, e.layer) for e in layer_plan.all_errors()]


def test_a_good_dense_checkpoint_plans_every_layer_without_problems():
    result = plan(*dense_checkpoint())
    assert result.all_errors() == []
    qkv = result.get("model.layers.0.self_attn.qkv_proj")
    assert qkv.layer_type == "linear" and qkv.quant_type == "W8A8_DYNAMIC"
    assert qkv.scheme_class.__name__ == "W8A8DynamicLinearScheme"
    assert qkv.shards == tuple(f"model.layers.0.self_attn.{p}_proj" for p in "qkv")
    assert qkv.out_features == (64, 32, 32) and qkv.in_features == 64 and not qkv.row_parallel
    assert result.get("model.layers.1.mlp.down_proj").row_parallel
    assert result.get("model.layers.1.mlp.gate_up_proj").out_features == (128, 128)
    assert result.get("lm_head").layer_type == "embedding" and result.get("lm_head").is_float
    linear = [p for p in result.layers.values() if p.layer_type == "linear"]
    assert len(linear) == 2 * 4  # qkv, o, gate_up, down per decoder layer


def test_description_only_plan_needs_no_headers():
    entries, _ = dense_checkpoint()
    result = plan(entries, None)
    assert result.all_errors() == [] and result.get("model.layers.0.self_attn.o_proj").scheme_class


# --- (a) FLOAT layers whose stored tensors are quantized --------------------------------------------


def test_float_layer_with_an_int8_weight_names_layer_and_file():
    entries, tensors = dense_checkpoint()
    entries.update(dict.fromkeys([k for k in entries if ".0.mlp.down_proj." in k], "FLOAT"))
    (error,) = plan(entries, tensors).all_errors()
    assert isinstance(error, CheckpointTensorError)
    assert error.layer == "model.layers.0.mlp.down_proj" and error.file == str(WEIGHTS)
    assert "FLOAT" in str(error) and "model.layers.0.mlp.down_proj.weight (torch.int8)" in str(error)
    assert DESCRIPTION in str(error)


def test_float_layer_with_float_weight_but_quantization_tensors():
    entries, tensors = dense_checkpoint()
    tensors.update(floating("model.layers.1.self_attn.o_proj", 64, 64))  # float weight ...
    for suffix in ("weight", "weight_scale", "weight_offset"):
        entries[f"model.layers.1.self_attn.o_proj.{suffix}"] = "FLOAT"
    tensors["model.layers.1.self_attn.o_proj.deq_scale"] = (torch.int64, (64,))  # ... and a deq_scale
    errors = plan(entries, tensors).all_errors()
    assert [(type(e), e.layer) for e in errors] == [
        (CheckpointTensorError, "model.layers.1.self_attn.o_proj")
    ]
    assert "weight_scale" in str(errors[0]) and "deq_scale" in str(errors[0])


def test_float_layers_with_float_tensors_are_fine():
    entries, tensors = dense_checkpoint()
    for name, (n, k) in SIZES.items():
        prefix = f"model.layers.1.{name}"
        for key in [key for key in tensors if key.startswith(prefix + ".")]:
            del tensors[key]
            entries.pop(key)
        tensors.update(floating(prefix, n, k))
        entries[f"{prefix}.weight"] = "FLOAT"
    result = plan(entries, tensors)
    assert result.all_errors() == []
    assert result.get("model.layers.1.self_attn.qkv_proj").is_float


# --- (b) entries for layers the model does not have -------------------------------------------------


def test_entries_for_layers_beyond_the_model_are_one_clear_error():
    entries, tensors = dense_checkpoint()
    entries["model.layers.99.mlp.down_proj.weight"] = "W8A8_DYNAMIC"
    entries["model.layers.2.self_attn.o_proj.weight"] = "W8A8_DYNAMIC"
    result = plan(entries, tensors)
    (error,) = result.all_errors()
    assert isinstance(error, UnusedDescriptionEntryError) and error.file == DESCRIPTION
    assert "model.layers.99.mlp.down_proj.weight" in str(error)
    assert "model.layers.2.self_attn.o_proj.weight" in str(error) and "2 decoder layers" in str(error)
    assert result.get("model.layers.99.mlp.down_proj") is None  # not planned as a layer


def test_stored_weights_without_entries_come_after_the_layers():
    entries, tensors = dense_checkpoint()
    entries = {k: v for k, v in entries.items() if not k.startswith("model.layers.1.self_attn.o_proj")}
    entries["model.layers.0.mlp.down_proj.weight"] = "W3A5"
    assert kinds(plan(entries, tensors)) == [
        ("UnknownQuantTypeError", "model.layers.0.mlp.down_proj"),
        ("LayerNotDescribedError", "model.layers.1.self_attn.o_proj"),
    ]


def test_settings_problems_come_first():
    entries, tensors = dense_checkpoint()
    entries["model.layers.0.self_attn.k_proj.weight"] = "W8A8"  # static: quant_bias etc. are missing
    entries["fa_quant_type"] = "FAQuant"
    assert kinds(plan(entries, tensors)) == [
        ("UnknownQuantTypeError", None),
        ("CheckpointTensorError", "model.layers.0.self_attn.k_proj"),
    ]


def test_tensor_problems_of_a_layer():
    entries, tensors = dense_checkpoint()
    tensors["model.layers.1.mlp.down_proj.weight_scale"] = (torch.float32, (63, 1))
    del tensors["model.layers.0.self_attn.v_proj.weight_scale"]
    errors = plan(entries, tensors).all_errors()
    assert [(type(e), e.layer) for e in errors] == [
        (CheckpointTensorError, "model.layers.0.self_attn.qkv_proj"),
        (CheckpointTensorError, "model.layers.1.mlp.down_proj"),
    ]
    assert errors[0].file == str(FOLDER) and errors[1].file == str(WEIGHTS)


# --- (c) MoE outside the packed-module table --------------------------------------------------------


def moe_checkpoint(model_type: str, projections=("gate_proj", "up_proj", "down_proj"), experts: int = 4):
    config = {**CONFIG, "model_type": model_type, "num_experts": experts, "moe_intermediate_size": 32}
    entries, tensors = dense_checkpoint()
    for layer in range(2):
        for name in ("gate_proj", "up_proj", "down_proj"):
            prefix = f"model.layers.{layer}.mlp.{name}"
            for key in [key for key in tensors if key.startswith(prefix + ".")]:
                del tensors[key]
                entries.pop(key)
        for expert in range(experts):
            gate, up, down = projections
            for name, (n, k) in ((gate, (32, 64)), (up, (32, 64)), (down, (64, 32))):
                stored = w8a8_dynamic(f"model.layers.{layer}.mlp.experts.{expert}.{name}", n, k)
                tensors.update(stored)
                entries.update(dict.fromkeys(stored, "W8A8_DYNAMIC"))
    return entries, tensors, config


@pytest.mark.parametrize(
    "model_type, projections",
    [
        ("qwen3_moe", ("gate_proj", "up_proj", "down_proj")),
        ("some_new_moe", ("gate_proj", "up_proj", "down_proj")),
        ("another_moe", ("w1", "w3", "w2")),
    ],
)
def test_moe_layers_with_and_without_a_table_entry(model_type, projections):
    entries, tensors, config = moe_checkpoint(model_type, projections)
    result = plan(entries, tensors, config)
    assert result.all_errors() == []
    experts = result.get("model.layers.1.mlp.experts")
    assert experts.layer_type == "moe" and experts.num_experts == 4
    assert experts.projections == projections
    assert experts.scheme_class.__name__ == "W8A8DynamicMoEScheme"


def test_moe_expert_problems_are_recorded_per_expert():
    entries, tensors, config = moe_checkpoint("qwen3_moe")
    del tensors["model.layers.1.mlp.experts.2.down_proj.weight_scale"]
    entries["model.layers.0.mlp.experts.3.up_proj.weight"] = "W8A16"
    assert kinds(plan(entries, tensors, config)) == [
        ("PackedShardMismatchError", "model.layers.0.mlp.experts"),
        ("CheckpointTensorError", "model.layers.1.mlp.experts (expert 2, w2)"),
    ]


def test_expert_entries_beyond_num_experts():
    entries, tensors, config = moe_checkpoint("qwen3_moe")
    entries["model.layers.0.mlp.experts.7.gate_proj.weight"] = "W8A8_DYNAMIC"
    (error,) = plan(entries, tensors, config).all_errors()
    assert isinstance(error, UnusedDescriptionEntryError)
    assert "model.layers.0.mlp.experts.7.gate_proj.weight" in str(error) and "4 experts" in str(error)


# --- loader lookups ----------------------------------------------------------------------------------


def test_linear_layer_plans_what_the_description_pass_did_not_foresee():
    entries, tensors = dense_checkpoint()
    result = plan(entries, tensors, {**CONFIG, "model_type": "not_in_the_table"})
    assert result.get("model.layers.0.self_attn.qkv_proj") is None  # no table: shards planned unfused
    vllm_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}
    qkv = result.linear_layer("model.layers.0.self_attn.qkv_proj", vllm_mapping)
    assert qkv.errors == [] and qkv.quant_type == "W8A8_DYNAMIC" and len(qkv.shards) == 3
    assert result.get("model.layers.0.self_attn.qkv_proj") is qkv
    assert result.linear_layer("model.embed_tokens", required=False).is_float
    assert result.linear_layer("model.norm_projection", required=False) is None
    missing = result.linear_layer("model.layers.0.mlp.extra_proj")
    assert isinstance(missing.errors[0], LayerNotDescribedError)


def test_linear_layer_replans_when_vllm_says_another_parallel_role():
    result = plan(*dense_checkpoint())
    planned = result.linear_layer("model.layers.0.mlp.down_proj", row_parallel=True)
    assert planned is result.get("model.layers.0.mlp.down_proj")
    replanned = result.linear_layer("model.layers.0.mlp.down_proj", row_parallel=False)
    assert replanned is not planned and not replanned.row_parallel


# --- (c2) mixed fused layers: shards of different quant types --------------------------------------


def mixed_checkpoint():
    """FLOAT q_proj next to W8A8_DYNAMIC k/v (layer 0), W4A16 gate next to W8A8_DYNAMIC up (layer 1)."""
    entries, tensors = dense_checkpoint()
    q = "model.layers.0.self_attn.q_proj"
    for suffix in ("weight", "weight_scale", "weight_offset"):
        entries.pop(f"{q}.{suffix}"), tensors.pop(f"{q}.{suffix}")
    tensors.update(floating(q, 64, 64))
    entries[f"{q}.weight"] = "FLOAT"
    gate = "model.layers.1.mlp.gate_proj"
    stored = w4a16(gate, 128, 64)
    tensors.update(stored)
    entries.update(dict.fromkeys(stored, "W4A16"))
    return entries, tensors


def test_mixed_fused_layers_plan_each_shard_with_its_own_scheme():
    result = plan(*mixed_checkpoint())
    assert result.all_errors() == []
    qkv = result.get("model.layers.0.self_attn.qkv_proj")
    assert qkv.is_mixed and not qkv.is_float and qkv.scheme_class is None
    assert qkv.quant_type == "FLOAT + W8A8_DYNAMIC + W8A8_DYNAMIC"
    assert [p.prefix for p in qkv.shard_layers] == list(qkv.shards)
    assert [p.quant_type for p in qkv.shard_layers] == ["FLOAT", "W8A8_DYNAMIC", "W8A8_DYNAMIC"]
    assert [p.scheme_class and p.scheme_class.__name__ for p in qkv.shard_layers] == [
        None,
        "W8A8DynamicLinearScheme",
        "W8A8DynamicLinearScheme",
    ]
    assert qkv.out_features == (64, 32, 32) and qkv.in_features == 64
    gate_up = result.get("model.layers.1.mlp.gate_up_proj")
    assert gate_up.quant_type == "W4A16 + W8A8_DYNAMIC"
    assert [type(p.scheme).__name__ for p in gate_up.shard_layers] == [
        "W4A16LinearScheme",
        "W8A8DynamicLinearScheme",
    ]
    assert gate_up.shard_layers[0].scheme.group_size == 16
    uniform = result.get("model.layers.1.self_attn.qkv_proj")  # same-type layers stay one scheme
    assert not uniform.is_mixed and uniform.scheme_class.__name__ == "W8A8DynamicLinearScheme"


def test_mixed_layer_problems_name_the_shard():
    entries, tensors = mixed_checkpoint()
    tensors["model.layers.1.mlp.gate_proj.weight_offset"] = (torch.float32, (64, 4))  # W4A16 shard: wrong N
    entries["model.layers.0.mlp.up_proj.weight"] = "FLOAT"  # a FLOAT shard storing int8
    result = plan(entries, tensors)
    assert kinds(result) == [
        ("CheckpointTensorError", "model.layers.0.mlp.up_proj"),
        ("CheckpointTensorError", "model.layers.1.mlp.gate_proj"),
    ]
    assert "weight_offset" in str(result.all_errors()[1]) and DESCRIPTION in str(result.all_errors()[0])
    assert result.get("model.layers.0.mlp.gate_up_proj").quant_type == "W8A8_DYNAMIC + FLOAT"
    with pytest.raises(CheckpointTensorError, match="marks 'model.layers.0.mlp.up_proj' FLOAT"):
        result.raise_first_error()


def test_mixed_layer_found_on_demand_and_with_an_unknown_shard_type():
    entries, tensors = mixed_checkpoint()
    entries["model.layers.1.self_attn.v_proj.weight"] = "W3A5"
    result = plan(entries, tensors)
    assert kinds(result) == [("UnknownQuantTypeError", "model.layers.1.self_attn.v_proj")]
    del result.layers["model.layers.0.self_attn.qkv_proj"]
    again = result.linear_layer("model.layers.0.self_attn.qkv_proj", row_parallel=False)
    assert again.is_mixed and again.errors == [] and again is result.get("model.layers.0.self_attn.qkv_proj")


def test_mixed_layers_under_tensor_parallelism_check_each_shard():
    entries, tensors = mixed_checkpoint()
    assert plan(entries, tensors, tensor_parallel_size=4).all_errors() == []  # k/v replicated at 4 ranks
    # W4A16 packs two int4 per byte along N (gate: 128 rows): 128 ranks leave one row each.
    errors = plan(entries, tensors, tensor_parallel_size=128).all_errors()
    gate = [e for e in errors if e.layer == "model.layers.1.mlp.gate_proj"]
    assert len(gate) == 1 and "pack factor 2" in str(gate[0])
    assert not any(e.layer == "model.layers.1.mlp.up_proj" for e in errors)  # int8 rows split fine


# --- (d) tensor parallelism ----------------------------------------------------------------------------


def test_sizes_that_split_over_the_ranks_pass():
    for tp in (1, 2, 4):  # 2 KV heads: replicated at 4 ranks, as vLLM does
        assert plan(*dense_checkpoint(), tensor_parallel_size=tp).all_errors() == []


def test_column_and_row_parallel_sizes_that_do_not_split():
    errors = plan(*dense_checkpoint(layers=1), tensor_parallel_size=3).all_errors()
    messages = {e.layer: str(e) for e in errors}
    assert set(messages) == {
        "model.layers.0.self_attn.qkv_proj",
        "model.layers.0.self_attn.o_proj",
        "model.layers.0.mlp.gate_up_proj",
        "model.layers.0.mlp.down_proj",
    }
    assert all(isinstance(e, CheckpointTensorError) and e.file == str(WEIGHTS) for e in errors)
    assert "tensor parallelism 3" in messages["model.layers.0.self_attn.qkv_proj"]
    assert "N = 64 output features" in messages["model.layers.0.self_attn.qkv_proj"]
    assert "row-parallel layer's K = 128" in messages["model.layers.0.mlp.down_proj"]


def test_replicated_layers_are_not_split():
    entries, tensors, config = moe_checkpoint("qwen3_moe")
    for layer in range(2):
        tensors[f"model.layers.{layer}.mlp.gate.weight"] = (torch.bfloat16, (4, 64))  # 4 experts
        entries[f"model.layers.{layer}.mlp.gate.weight"] = "FLOAT"
    result = plan(entries, tensors, config, tensor_parallel_size=8)
    assert result.get("model.layers.0.mlp.gate").is_float
    assert not any(".mlp.gate" in (e.layer or "") for e in result.all_errors())


def test_group_count_of_a_row_parallel_layer_must_split():
    # K = 64 with groups of 16: 4 groups split over 2 and 4 ranks, not over 8 (K = 8 per rank).
    entries, tensors = dense_checkpoint(layers=1, make=w4a16, quant_type="W4A16")
    assert plan(entries, tensors, tensor_parallel_size=4).all_errors() == []
    errors = plan(entries, tensors, tensor_parallel_size=8).all_errors()
    assert [e.layer for e in errors] == ["model.layers.0.self_attn.o_proj"]  # down_proj: K = 16 per rank
    assert "its 4 K-groups of 16 input features do not split into 8 equal parts" in str(errors[0])
    assert "tensor parallelism 8" in str(errors[0]) and errors[0].file is not None


def test_int4_pairs_must_split_per_rank():
    # W4A16 stores two int4 per byte along N: a rank's N must stay even.
    entries, tensors = dense_checkpoint(layers=1, make=w4a16, quant_type="W4A16")
    result = plan(entries, tensors)
    planned = result.get("model.layers.0.self_attn.o_proj")
    planned.row_parallel = False  # pretend it were column parallel: N = 64 over 64 ranks -> 1 row each
    (error,) = partition_errors(planned, 64, CONFIG, result.description)
    assert "pack factor 2" in str(error) and error.layer == "model.layers.0.self_attn.o_proj"


def test_moe_partition_checks():
    entries, tensors, config = moe_checkpoint("qwen3_moe")
    assert plan(entries, tensors, config, tensor_parallel_size=2).all_errors() == []
    errors = plan(entries, tensors, {**config, "moe_intermediate_size": 32}, tensor_parallel_size=64)
    assert any("experts' intermediate size 32" in str(e) for e in errors.all_errors())


def test_moe_scheme_restrictions_apply_under_tensor_parallelism():
    entries, tensors, config = moe_checkpoint("qwen3_moe")
    result = plan(entries, tensors, config)
    experts = result.get("model.layers.0.mlp.experts")
    assert result.partition_errors("model.layers.0.mlp.experts", 1) == []
    assert partition_errors(experts, 2, config) == []
    experts.scheme.check_layer = lambda tp: (_ for _ in ()).throw(
        UnknownQuantTypeError("no TP", file=DESCRIPTION, layer=experts.prefix)
    )
    (error,) = partition_errors(experts, 2, config)
    assert isinstance(error, UnknownQuantTypeError)


def test_invalid_tensor_parallel_size():
    with pytest.raises(ValueError, match="at least 1"):
        plan(*dense_checkpoint(), tensor_parallel_size=0)


def test_the_module_imports_without_vllm():
    code = (
        "import sys; sys.modules['vllm'] = None\n"
        "import vllm_modelslim.format.layer_plan as m\n"
        "assert 'vllm.config' not in sys.modules\n"
        "print(m.plan_layers.__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
