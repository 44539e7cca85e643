"""Facts about tool-made msmodelslim 26.1.0 Qwen3-MoE checkpoints (qwen3_moe adapter, transformers 4.57.6).

The tiny Qwen3-MoE (8 experts, top-2) is quantized by the real tool; these
tests pin what it writes for experts, which the MoE schemes rely on.
"""

import pytest
import torch
from ckpt_utils import relative_error, tensors

from model_folders import layer_count
from vllm_modelslim.format import load_description
from vllm_modelslim.kernels.int4_packing import unpack_int4_pairs

MOE_RECIPES = {
    "moe_w8a8_dynamic": "W8A8_DYNAMIC",
    "moe_w8a8_static": "W8A8",
    "moe_w8a8_mix": "W8A8_MIX",
    "moe_w8a16": "W8A16",
    "moe_w4a16": "W4A16",
    "moe_w4a8_dynamic": "W4A8_DYNAMIC",
    "moe_w4a8_dynamic_pergroup": "W4A8_DYNAMIC",
}


@pytest.mark.parametrize("recipe", sorted(MOE_RECIPES))
def test_every_expert_is_quantized_and_the_router_stays_float(quantized, recipe):
    folder = quantized(recipe)
    description = load_description(folder)
    weights = dict(description.weight_entries())
    experts = {k: v for k, v in weights.items() if ".mlp.experts." in k}
    layers = layer_count(folder)
    assert len(experts) == layers * 8 * 3  # layers × experts × (gate, up, down)
    assert set(experts.values()) == {MOE_RECIPES[recipe]}
    assert {weights[f"model.layers.{i}.mlp.gate"] for i in range(layers)} == {"FLOAT"}


def _group_expand(values: torch.Tensor, k: int) -> torch.Tensor:
    return values.double().repeat_interleave(k // values.shape[1], dim=1)


@pytest.mark.parametrize(
    "recipe, bound",
    [("moe_w8a8_dynamic", 0.02), ("moe_w8a16", 0.02), ("moe_w4a16", 0.15), ("moe_w4a8_dynamic", 0.2)],
)
def test_expert_weights_dequantize_to_the_float_experts(quantized, moe_model, recipe, bound):
    """Experts are stored like linear layers: int4 as pairs along the output dim, w = (q − offset)·scale."""
    ckpt, original = tensors(quantized(recipe)), tensors(moe_model)
    for expert in (0, 7):
        for proj in ("gate_proj", "down_proj"):
            layer = f"model.layers.1.mlp.experts.{expert}.{proj}"
            q, scale = ckpt[f"{layer}.weight"], ckpt[f"{layer}.weight_scale"]
            if q.shape[0] * 2 == scale.shape[0]:
                q = unpack_int4_pairs(q, dim=0)
            k = q.shape[1]
            offset = ckpt.get(f"{layer}.weight_offset", torch.zeros_like(scale))
            weight = (q.double() - _group_expand(offset, k)) * _group_expand(scale, k)
            error = relative_error(weight, original[f"{layer}.weight"])
            assert error < bound, (layer, error)
