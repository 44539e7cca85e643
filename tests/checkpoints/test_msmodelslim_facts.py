"""Facts about tool-made msmodelslim 26.1.0 checkpoints that our schemes rely on (spec ERRATA)."""

import pytest
import torch
from ckpt_utils import relative_error, tensors

from model_folders import layer_count
from vllm_modelslim.format import CheckpointIndex, load_description
from vllm_modelslim.kernels import dequantize_int8_weight
from vllm_modelslim.schemes import LayerContext, get_scheme_class

LAYER = "model.layers.1.mlp.down_proj"


def test_asymmetric_w8a16_offset_is_a_zero_point_to_subtract(quantized, demo_model):
    ckpt = tensors(quantized("w8a16_asym"))
    original = tensors(demo_model)[f"{LAYER}.weight"]
    q, scale, offset = (ckpt[f"{LAYER}.{s}"] for s in ("weight", "weight_scale", "weight_offset"))
    assert bool((offset != 0).any()), "the asymmetric recipe must produce non-zero offsets"
    minus = dequantize_int8_weight(q, scale.reshape(-1), offset.reshape(-1))
    plus = dequantize_int8_weight(q, scale.reshape(-1), -offset.reshape(-1))
    err_minus, err_plus = relative_error(minus, original), relative_error(plus, original)
    print(f"\nW8A16 asym dequantization error: (q - offset)*s {err_minus:.2%}, (q + offset)*s {err_plus:.2%}")
    assert err_minus < 0.03
    assert err_plus > 0.3


def test_static_w8a8_quant_bias_folds_the_input_offset(quantized):
    ckpt = tensors(quantized("w8a8_static"))
    desc = load_description(quantized("w8a8_static"))
    checked = 0
    for prefix, quant_type in desc.weight_entries():
        if quant_type != "W8A8":
            continue
        weight = ckpt[f"{prefix}.weight"].to(torch.int64)
        offset = ckpt[f"{prefix}.input_offset"]
        expected = -offset.to(torch.int64) * weight.sum(dim=1)  # Qwen3 has no linear bias
        assert torch.equal(ckpt[f"{prefix}.quant_bias"].to(torch.int64), expected), prefix
        assert ckpt[f"{prefix}.deq_scale"].dtype == torch.float32
        assert f"{prefix}.weight_scale" not in ckpt  # ERRATA 2
        checked += 1
    assert checked == 7 * layer_count(quantized("w8a8_static"))  # q, k, v, o, gate, up, down
    offsets = {ckpt[f"{p}.input_offset"].item() for p, t in desc.weight_entries() if t == "W8A8"}
    assert offsets != {0.0}, "calibration should give some non-zero activation offsets"


def test_fp32_model_stores_deq_scale_as_int64_fp32_bits(quantized):
    from vllm_modelslim.schemes.linear.checkpoint_tensors import fp32_from_int64_bits

    from_fp32 = tensors(quantized("w8a8_static_fp32"))
    from_bf16 = tensors(quantized("w8a8_static"))
    for prefix in (LAYER, "model.layers.0.self_attn.q_proj"):
        raw = from_fp32[f"{prefix}.deq_scale"]
        assert raw.dtype == torch.int64
        assert bool(((raw >> 32) == 0).all()), "fp32 bits in the low word, zero-extended"
        decoded = fp32_from_int64_bits(raw)
        # Same weights, calibrated from an fp32 instead of a bf16 model: the same scales to < 1.5%.
        assert relative_error(decoded, from_bf16[f"{prefix}.deq_scale"]) < 0.015


@pytest.mark.parametrize("recipe", ["w8a8_dynamic", "w8a8_static", "w8a8_static_fp32", "w8a16", "w8a16_asym"])
def test_every_layer_passes_header_validation(quantized, recipe):
    from vllm_modelslim.format.tensor_spec import validate_layer_tensors

    folder = quantized(recipe)
    desc = load_description(folder)
    index = CheckpointIndex.scan(folder)
    assert index.modelslim_weight_files(), "msmodelslim weight file names"
    shapes = {"q_proj": 256, "k_proj": 128, "v_proj": 128, "o_proj": 256, "gate_proj": 768, "up_proj": 768}
    for prefix, quant_type in desc.weight_entries():
        if quant_type == "FLOAT":
            continue
        name = prefix.rsplit(".", 1)[-1]
        n, k = (256, 768) if name == "down_proj" else (shapes[name], 256)
        context = LayerContext(prefix, quant_type, (prefix,), desc, index, name in ("o_proj", "down_proj"))
        scheme = get_scheme_class(quant_type, "linear")(context)
        validate_layer_tensors(
            index, prefix, quant_type, (prefix,), [n], k, scheme.checkpoint_tensors(), scheme.group_size
        )
    assert desc.quant_type("lm_head.weight") == "FLOAT"
