"""``vllm-modelslim inspect`` on the tiny GLM-4.5 MoE's tool-made checkpoints, and on broken MTP copies.

msmodelslim's ``glm4_moe`` adapter quantizes the MTP layer (``model.layers.4``:
a full MoE decoder layer plus ``eh_proj`` and ``shared_head.head``) like the
others; inspect lists it with the main layers and checks its tensors, since a
speculative-decoding engine would load it.
"""

from __future__ import annotations

import shutil

import pytest

import glm4_moe_breakages
from vllm_modelslim.inspection import inspect_checkpoint

RECIPES = {
    # recipe: (quant type of the routed experts, bounds of quantized bytes / BF16 bytes)
    "glm4_moe_w8a8_dynamic": ("W8A8_DYNAMIC", (0.50, 0.55)),
    "glm4_moe_w4a8_dynamic": ("W4A8_DYNAMIC", (0.30, 0.36)),
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_tool_made_checkpoint_inspects_clean(glm4_moe_checkpoint, recipe):
    folder = glm4_moe_checkpoint(recipe)
    report = inspect_checkpoint(folder)
    assert report.problems == [], [str(p) for p in report.problems]
    assert report.format == "modelslim" and report.model_type == "glm4_moe" and report.values_checked
    experts_type, (low, high) = RECIPES[recipe]
    rows = {(g["layer_type"], g["quant_type"], g["pattern"]): g["indices"] for g in report.pattern_table()}
    print("\n" + "\n".join(f"{k}: {v}" for k, v in sorted(rows.items())))
    # Main MoE layers 1-3 and the MTP layer 4; layer 0 is dense.
    assert rows[("moe", experts_type, "model.layers.*.mlp.experts")] == "1-4"
    assert rows[("linear", "FLOAT", "model.layers.*.mlp.gate")] == "1-4"
    assert rows[("linear", "W8A8_DYNAMIC", "model.layers.*.mlp.shared_experts.gate_up_proj")] == "1-4"
    assert rows[("linear", "W8A8_DYNAMIC", "model.layers.*.mlp.gate_up_proj")] == "0"
    assert rows[("linear", "W8A8_DYNAMIC", "model.layers.*.self_attn.qkv_proj")] == "0-4"
    assert rows[("linear", "W8A8_DYNAMIC", "model.layers.*.eh_proj")] == "4"
    (experts,) = {row.experts for row in report.layers if row.layer_type == "moe"}
    assert experts == 8
    stored, bf16 = report.quantized_layer_bytes()
    print(f"{recipe}: quantized layers {stored} B vs BF16 {bf16} B = {stored / bf16:.3f}")
    assert low <= stored / bf16 <= high


@pytest.mark.parametrize(**glm4_moe_breakages.case_params())
def test_broken_mtp_copy_reports_the_loaders_error(
    glm4_moe_checkpoint, tmp_path, breakage, error, text, layer
):
    folder = tmp_path / "broken"
    shutil.copytree(glm4_moe_checkpoint(glm4_moe_breakages.RECIPE), folder)
    breakage(folder)
    report = inspect_checkpoint(folder)
    problems = [str(p) for p in report.problems]
    print("\n" + "\n".join(problems))
    assert not report.loadable
    assert any(
        p.kind == error.__name__ and str(folder) in str(p) and text in str(p) and layer in str(p)
        for p in report.problems
    ), problems
