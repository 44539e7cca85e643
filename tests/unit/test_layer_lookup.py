import pytest

from vllm_modelslim.format import (
    LayerNotDescribedError,
    QuantDescription,
    packed_modules_for,
    resolve_layer,
    shard_prefixes,
)

QWEN3 = packed_modules_for("qwen3", None)
L0 = "model.layers.0"


def desc(**entries):
    return QuantDescription.from_mapping({k.replace("__", "."): v for k, v in entries.items()}, "desc.json")


def qkv(q, k, v):
    return {
        f"{L0}.self_attn.q_proj.weight": q,
        f"{L0}.self_attn.k_proj.weight": k,
        f"{L0}.self_attn.v_proj.weight": v,
    }


def test_packed_qkv_resolves_to_common_type():
    d = QuantDescription.from_mapping(qkv("W8A8", "W8A8", "W8A8"), "d.json")
    lq = resolve_layer(d, f"{L0}.self_attn.qkv_proj", QWEN3)
    assert lq.quant_type == "W8A8"
    assert lq.shard_prefixes == (f"{L0}.self_attn.q_proj", f"{L0}.self_attn.k_proj", f"{L0}.self_attn.v_proj")


def test_packed_shards_of_different_types_make_a_mixed_layer():
    d = QuantDescription.from_mapping(qkv("W8A8", "W8A16", "W8A8"), "d.json")
    lq = resolve_layer(d, f"{L0}.self_attn.qkv_proj", QWEN3)
    assert lq.is_mixed and not lq.is_float
    assert lq.shard_quant_types == ("W8A8", "W8A16", "W8A8")
    assert lq.quant_type == "W8A8 + W8A16 + W8A8"


def test_float_next_to_quantized_shards_is_mixed_not_float():
    d = QuantDescription.from_mapping(qkv("FLOAT", "W8A8_MIX", "W8A8_MIX"), "d.json")
    lq = resolve_layer(d, f"{L0}.self_attn.qkv_proj", QWEN3)
    assert lq.is_mixed and not lq.is_float and lq.shard_quant_types[0] == "FLOAT"
    uniform = resolve_layer(QuantDescription.from_mapping(qkv("FLOAT", "FLOAT", "FLOAT"), "d.json"),
                            f"{L0}.self_attn.qkv_proj", QWEN3)  # fmt: skip
    assert uniform.is_float and not uniform.is_mixed


def test_missing_shard_names_the_shard():
    entries = qkv("W8A8", "W8A8", "W8A8")
    del entries[f"{L0}.self_attn.v_proj.weight"]
    d = QuantDescription.from_mapping(entries, "d.json")
    with pytest.raises(LayerNotDescribedError, match="v_proj.weight"):
        resolve_layer(d, f"{L0}.self_attn.qkv_proj", QWEN3)


def test_missing_plain_layer_is_an_error_unless_optional():
    d = QuantDescription.from_mapping({"x.weight": "FLOAT"}, "d.json")
    with pytest.raises(LayerNotDescribedError, match="o_proj"):
        resolve_layer(d, f"{L0}.self_attn.o_proj", QWEN3)
    assert resolve_layer(d, "lm_head", QWEN3, required=False) is None


def test_float_layer():
    d = QuantDescription.from_mapping({"lm_head.weight": "FLOAT"}, "d.json")
    assert resolve_layer(d, "lm_head", QWEN3).is_float


def test_only_last_component_is_replaced():
    # vllm-ascend's str.replace would also rewrite the "qkv_proj" inside the path.
    mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}
    assert shard_prefixes("a.qkv_proj.b.qkv_proj", mapping) == (
        "a.qkv_proj.b.q_proj",
        "a.qkv_proj.b.k_proj",
        "a.qkv_proj.b.v_proj",
    )


def test_model_types_in_table():
    for model_type in ("qwen3", "qwen2", "llama", "qwen3_moe"):
        mapping = packed_modules_for(model_type, None)
        assert mapping["qkv_proj"] == ["q_proj", "k_proj", "v_proj"]
        assert mapping["gate_up_proj"] == ["gate_proj", "up_proj"]
    assert packed_modules_for("qwen3_moe", None)["experts"][0] == "experts.0.gate_proj"


def test_model_mapping_is_kept_and_table_extends_it():
    mapping = packed_modules_for("qwen3", {"fused_x": ["a", "b"]})
    assert mapping["fused_x"] == ["a", "b"]
    assert "qkv_proj" in mapping
    assert packed_modules_for("unknown_model", {"fused_x": ["a"]}) == {"fused_x": ["a"]}


def test_experts_lookup_uses_expert_zero():
    d = QuantDescription.from_mapping(
        {
            f"{L0}.mlp.experts.0.gate_proj.weight": "W8A8_DYNAMIC",
            f"{L0}.mlp.experts.0.up_proj.weight": "W8A8_DYNAMIC",
            f"{L0}.mlp.experts.0.down_proj.weight": "W8A8_DYNAMIC",
        },
        "d.json",
    )
    lq = resolve_layer(d, f"{L0}.mlp.experts", packed_modules_for("qwen3_moe", None))
    assert lq.quant_type == "W8A8_DYNAMIC"


def test_moe_families_resolve_their_fused_layers():
    d = QuantDescription.from_mapping(
        {
            f"{L0}.self_attn.q_a_proj.weight": "W8A8_DYNAMIC",
            f"{L0}.self_attn.kv_a_proj_with_mqa.weight": "W8A8_DYNAMIC",
            f"{L0}.mlp.experts.0.w1.weight": "W4A8_DYNAMIC",
            f"{L0}.mlp.experts.0.w2.weight": "W4A8_DYNAMIC",
            f"{L0}.mlp.experts.0.w3.weight": "W4A8_DYNAMIC",
        },
        "d.json",
    )
    for model_type in ("deepseek_v2", "deepseek_v3", "kimi_k2"):
        mla = resolve_layer(d, f"{L0}.self_attn.fused_qkv_a_proj", packed_modules_for(model_type, None))
        assert mla.shard_prefixes == (f"{L0}.self_attn.q_a_proj", f"{L0}.self_attn.kv_a_proj_with_mqa")
        assert packed_modules_for(model_type, None)["experts"][2] == "experts.0.down_proj"
    minimax = resolve_layer(d, f"{L0}.mlp.experts", packed_modules_for("minimax_m2", None))
    assert minimax.quant_type == "W4A8_DYNAMIC"
    assert packed_modules_for("glm4_moe", None)["gate_up_proj"] == ["gate_proj", "up_proj"]
