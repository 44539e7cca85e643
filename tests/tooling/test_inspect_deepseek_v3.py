"""``vllm-modelslim inspect`` on the tiny DeepSeek-V3 (MLA + MoE) checkpoints.

Tool-made (msmodelslim's Kimi-K2 adapter) W8A8_DYNAMIC and W4A8_DYNAMIC-experts
checkpoints inspect clean with every MLA projection, the fused
``fused_qkv_a_proj``, the shared experts and the routed experts planned with
their quant types and sizes from config.json; the router stays FLOAT. Hand-made
from them: the float MTP layer without description entries is accepted, the
MTP layer described as quantized without its tensors is reported naming the
file and the layer.
"""

from __future__ import annotations

import pytest

from vllm_modelslim.inspection import inspect_checkpoint

LAYERS = 3  # TinyDeepseekV3Spec's default: layer 0 dense, layers 1-2 MoE


@pytest.mark.parametrize(
    ("recipe", "attention_type", "experts_type"),
    [
        ("deepseek_v3_w8a8_dynamic", "W8A8_DYNAMIC", "W8A8_DYNAMIC"),
        ("deepseek_v3_w4a8_dynamic", "W8A8_DYNAMIC", "W4A8_DYNAMIC"),
        pytest.param("deepseek_v3_w8a8_static_attn", "W8A8", "W8A8_DYNAMIC", marks=pytest.mark.extended),
    ],
)
def test_tool_made_checkpoint_inspects_clean(deepseek_v3_checkpoint, recipe, attention_type, experts_type):
    report = inspect_checkpoint(deepseek_v3_checkpoint(recipe))
    assert report.problems == []
    rows = {row.prefix: row for row in report.layers}
    for i in range(LAYERS):
        attn = f"model.layers.{i}.self_attn"
        fused = rows[f"{attn}.fused_qkv_a_proj"]
        assert fused.quant_type == attention_type
        assert fused.shards == (f"{attn}.q_a_proj", f"{attn}.kv_a_proj_with_mqa")
        for name in ("q_b_proj", "o_proj"):
            assert rows[f"{attn}.{name}"].quant_type == attention_type, name
        assert rows[f"{attn}.kv_b_proj"].quant_type == "W8A8_DYNAMIC"
    assert rows["model.layers.0.mlp.gate_up_proj"].quant_type == "W8A8_DYNAMIC"
    for i in range(1, LAYERS):
        experts = rows[f"model.layers.{i}.mlp.experts"]
        assert (experts.quant_type, experts.experts) == (experts_type, 8)
        assert rows[f"model.layers.{i}.mlp.shared_experts.gate_up_proj"].quant_type == "W8A8_DYNAMIC"
        assert rows[f"model.layers.{i}.mlp.shared_experts.down_proj"].quant_type == "W8A8_DYNAMIC"
    assert all(row.quant_type == "FLOAT" for p, row in rows.items() if p.endswith("mlp.gate"))


def test_float_mtp_layer_without_entries_inspects_clean(deepseek_v3_mtp_checkpoint):
    source, folder = deepseek_v3_mtp_checkpoint()
    assert inspect_checkpoint(folder).problems == []


def test_mtp_layer_described_quantized_without_its_tensors(deepseek_v3_mtp_checkpoint):
    _, folder = deepseek_v3_mtp_checkpoint("W8A8_DYNAMIC")
    problems = inspect_checkpoint(folder).problems
    assert problems
    mtp = f"model.layers.{LAYERS}."
    assert all(p.layer and p.layer.startswith(mtp) for p in problems), problems
    assert {p.file for p in problems} == {str(folder / "quant_model_weights-mtp.safetensors")}
    layers = {p.layer for p in problems}
    assert {f"{mtp}self_attn.kv_b_proj", f"{mtp}self_attn.fused_qkv_a_proj", f"{mtp}eh_proj"} <= layers
