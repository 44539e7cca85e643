"""Facts about tool-made msmodelslim 26.1.0 W8A8C8 checkpoints (int8 KV cache) that C8 relies on."""

import pytest
import torch
from ckpt_utils import relative_error, tensors

from model_folders import layer_count
from vllm_modelslim.format import load_description
from vllm_modelslim.format.kv_cache_c8 import C8_TENSORS, c8_attention_prefixes
from vllm_modelslim.kernels.kv_cache_int8 import dequantize_kv_int8, quantize_kv_int8

KV_CHANNELS = 2 * 64  # the demo model: 2 KV heads of 64


@pytest.mark.parametrize("recipe", ["w8a8c8", "w8a8c8_asym", "moe_w8a8c8"])
def test_c8_description_and_tensors(quantized, recipe):
    folder = quantized(recipe)
    description = load_description(folder)
    assert description.settings["kv_cache_type"] == "C8"
    assert description.settings["kv_quant_type"] == "C8"  # ERRATA 7: still written
    prefixes = c8_attention_prefixes(description)
    assert prefixes == [f"model.layers.{i}.self_attn" for i in range(layer_count(folder))]
    stored = tensors(folder)
    for prefix in prefixes:
        for tensor in C8_TENSORS:
            name = f"{prefix}.{tensor.suffix}"
            assert description.entries[name] == "C8"
            assert stored[name].shape == (KV_CHANNELS,), name
            assert stored[name].dtype == torch.bfloat16, name  # follows the model dtype
    offsets = torch.cat([v.float() for k, v in stored.items() if k.endswith("kv_cache_offset")])
    assert torch.equal(offsets, offsets.round()) and offsets.abs().max() <= 128
    if recipe.endswith("_asym"):
        assert bool((offsets != 0).any()), "the asymmetric recipe must produce non-zero offsets"
    else:
        assert bool((offsets == 0).all())


def real_keys_and_values(model_dir, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Post-RoPE keys and values ``[tokens, kv_heads, head_dim]`` of the unquantized demo model.

    Eight held-out texts of 64 tokens each (calibration-length sequences: per-channel
    minmax ranges calibrated on short samples do not cover RoPE phases of far positions).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

    from vllm_modelslim.examples.tiny_qwen3 import held_out_texts

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    keys, values = [], []
    for text in held_out_texts(8):
        ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :64]
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model(input_ids=ids, past_key_values=cache)
        keys.append(cache.layers[layer].keys[0].transpose(0, 1))
        values.append(cache.layers[layer].values[0].transpose(0, 1))
    return torch.cat(keys), torch.cat(values)


def test_asymmetric_kv_offset_is_a_zero_point_to_subtract(quantized, demo_model):
    """With msmodelslim's asymmetric offsets, (q − o)·s reproduces real keys/values; q·s does not."""
    stored = tensors(quantized("w8a8c8_asym"))
    prefix = "model.layers.1.self_attn"
    for x, proj in zip(real_keys_and_values(demo_model, 1), ("k_proj", "v_proj"), strict=True):
        scale = stored[f"{prefix}.{proj}.kv_cache_scale"].float().reshape(2, 64)
        offset = stored[f"{prefix}.{proj}.kv_cache_offset"].float().reshape(2, 64)
        q = quantize_kv_int8(x, scale, offset)
        subtract = relative_error(dequantize_kv_int8(q, scale, offset, torch.float32), x)
        ignore = relative_error(dequantize_kv_int8(q, scale, torch.zeros_like(offset), torch.float32), x)
        clipped = float(((q == -128) | (q == 127)).float().mean())
        print(f"\n{proj}: (q - o)*s error {subtract:.2%}, q*s error {ignore:.2%}, clipped {clipped:.2%}")
        # msmodelslim's minmax ranges clip ~2-4 % of held-out values (and of its own calibration
        # text's): (q − o)·s measured 4-6 % error here, q·s 30-40 %.
        assert subtract < 0.1
        assert ignore > 4 * subtract
