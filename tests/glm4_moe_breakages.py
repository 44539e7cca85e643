"""Broken copies of the tiny GLM-4.5 MoE's W8A8_DYNAMIC checkpoint around its MTP layer.

Shared by the engine test (``tests/engine/test_glm4_moe_e2e.py``: vLLM must
refuse each copy) and the inspect test (``tests/tooling/test_inspect_glm4_moe.py``).
Each case is ``(id, breakage, error type, text the message must contain, layer)``;
the message must also name the broken folder.
"""

from __future__ import annotations

from breakages import drop_tensors, edit_config, edit_description, edit_tensors, set_entry
from vllm_modelslim.format import CheckpointTensorError, UnusedDescriptionEntryError

RECIPE = "glm4_moe_w8a8_dynamic"
MTP = "model.layers.4"  # the tiny model's MTP layer (num_hidden_layers = 4, num_nextn_predict_layers = 1)

CASES = [
    # The MTP layer is described as W8A8_DYNAMIC but its tensors are missing.
    ("mtp-scale-missing", edit_tensors(drop_tensors(f"{MTP}.eh_proj.weight_scale")),
     CheckpointTensorError, "eh_proj.weight_scale", f"{MTP}.eh_proj"),
    ("mtp-layer-missing", edit_tensors(drop_tensors(f"{MTP}.")),
     CheckpointTensorError, "no *.safetensors file", f"{MTP}."),
    # Without num_nextn_predict_layers layer 4 is a layer the model does not have.
    ("config-without-mtp", edit_config("num_nextn_predict_layers", 0),
     UnusedDescriptionEntryError, "quant_model_description.json", f"{MTP}.self_attn.q_proj.weight"),
    ("layer-beyond-mtp", edit_description(set_entry("model.layers.5.eh_proj.weight", "W8A8_DYNAMIC")),
     UnusedDescriptionEntryError, "quant_model_description.json", "model.layers.5.eh_proj.weight"),
]  # fmt: skip


def case_params() -> dict:
    """``pytest.mark.parametrize`` arguments over :data:`CASES`."""
    return {
        "argnames": "breakage, error, text, layer",
        "argvalues": [c[1:] for c in CASES],
        "ids": [c[0] for c in CASES],
    }
