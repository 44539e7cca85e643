"""FLOAT rollbacks in tool-made msmodelslim 26.1.0 checkpoints, and the hand-made rollback that copies them.

msmodelslim's ``disable_names`` (and the sensitivity-based fallback of its
practices) keeps single checkpoint layers FLOAT, so vLLM's fused layers get
FLOAT shards next to quantized ones (``tests/engine/test_mixed_shards_e2e.py``).
``handmade_checkpoints.write_float_rollback`` makes such layers from a
quantized checkpoint by dequantizing them; these tests pin both to the float
demo model.
"""

import torch
from ckpt_utils import tensors

from vllm_modelslim.examples.handmade_checkpoints import dequantized_int8_weight
from vllm_modelslim.format import load_description

Q = "model.layers.0.self_attn.q_proj"
UP = "model.layers.1.mlp.up_proj"


def test_the_tools_rollback_keeps_the_original_float_weight(quantized, demo_model):
    folder = quantized("w8a8_mix_partial_float")
    entries = load_description(folder).entries
    assert entries[f"{Q}.weight"] == entries[f"{UP}.weight"] == "FLOAT"
    assert entries[f"{Q.replace('q_proj', 'k_proj')}.weight"] == "W8A8_MIX"
    assert entries[f"{UP.replace('up_proj', 'gate_proj')}.weight"] == "W8A8_MIX"
    ckpt, original = tensors(folder), tensors(demo_model)
    for layer in (Q, UP):
        assert not [name for name in ckpt if name.startswith(f"{layer}.") and name != f"{layer}.weight"]
        assert torch.equal(ckpt[f"{layer}.weight"], original[f"{layer}.weight"]), layer  # no smoothing


def within_a_step(dequantized: torch.Tensor, original: torch.Tensor, step: torch.Tensor) -> bool:
    """Per-channel int8 rounding as msmodelslim does it (in bf16): within ~1 step of its row, 0.25 on average.

    Measured on the demo model: at most 1.07 steps, 0.27 on average.
    """
    error = (dequantized - original.to(torch.float32)).abs() / step.reshape(-1, 1)
    return float(error.max()) <= 1.1 and float(error.mean()) <= 0.3


def test_dequantized_static_and_pd_mix_weights_are_the_float_weights(quantized, demo_model):
    original = tensors(demo_model)
    static = tensors(quantized("w8a8_static"))  # deq_scale / input_scale path
    w = dequantized_int8_weight(Q, static)
    step = static[f"{Q}.deq_scale"].to(torch.float32) / static[f"{Q}.input_scale"].to(torch.float32)
    assert within_a_step(w, original[f"{Q}.weight"], step)
    mix = tensors(quantized("w8a8_mix_partial_float"))  # (q − offset)·weight_scale path
    k = Q.replace("q_proj", "k_proj")
    assert within_a_step(dequantized_int8_weight(k, mix), original[f"{k}.weight"], mix[f"{k}.weight_scale"])
    # A wrong scale (weight_scale instead of deq_scale/input_scale) would be far off:
    assert not within_a_step(static[f"{Q}.weight"].float(), original[f"{Q}.weight"], step)
