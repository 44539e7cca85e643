"""Facts about tool-made msmodelslim 26.1.0 int4, W8A8_MIX and anti-outlier checkpoints (spec ERRATA 2-6)."""

import pytest
import torch
from ckpt_utils import relative_error, tensors

from vllm_modelslim.format import load_description
from vllm_modelslim.kernels import quantize_dynamic_per_token, scaled_int8_mm_reference
from vllm_modelslim.kernels.int4_packing import unpack_int4_pairs

Q_PROJ = "model.layers.0.self_attn.q_proj"
DOWN_PROJ = "model.layers.0.mlp.down_proj"
EXPERT = "model.layers.1.mlp.experts.5"  # tiny Qwen3-MoE
DENSE_LAYERS = ((Q_PROJ, 1), (DOWN_PROJ, 16))  # (layer, scale_bias columns)
EXPERT_LAYERS = ((f"{EXPERT}.gate_proj", 1), (f"{EXPERT}.down_proj", 16))


def group_expand(values, k):
    return values.double().repeat_interleave(k // values.shape[1], dim=1)


def test_w4a16_pairs_along_output_low_nibble_first_and_offset_subtracted(quantized, demo_model):
    ckpt, original = tensors(quantized("w4a16_asym")), tensors(demo_model)
    layer = DOWN_PROJ
    packed, scale, offset = (ckpt[f"{layer}.{s}"] for s in ("weight", "weight_scale", "weight_offset"))
    assert packed.shape[0] * 2 == scale.shape[0], "two int4 per byte along the output dim"
    assert bool((offset != 0).any())
    q = unpack_int4_pairs(packed, dim=0).double()
    k = q.shape[1]
    want = original[f"{layer}.weight"]
    minus = (q - group_expand(offset, k)) * group_expand(scale, k)
    plus = (q + group_expand(offset, k)) * group_expand(scale, k)
    swapped = (q.view(-1, 2, k).flip(1).reshape(q.shape) - group_expand(offset, k)) * group_expand(scale, k)
    errors = {
        name: relative_error(w, want) for name, w in (("minus", minus), ("plus", plus), ("swapped", swapped))
    }
    print(f"\nW4A16 asym g64 dequantization error: {errors}")
    assert errors["minus"] < 0.15 and errors["plus"] > 0.4 and errors["swapped"] > 0.4


@pytest.mark.parametrize(
    "recipe, exact, layers",
    [
        ("w4a8_dynamic", True, DENSE_LAYERS),
        ("w4a8_dynamic_pergroup", False, DENSE_LAYERS),
        ("moe_w4a8_dynamic", True, EXPERT_LAYERS),
        ("moe_w4a8_dynamic_pergroup", False, EXPERT_LAYERS),
    ],
)
def test_w4a8_scale_bias_is_eight_times_the_dequantized_row_sum(quantized, recipe, exact, layers):
    ckpt = tensors(quantized(recipe))
    for layer, columns in layers:
        q = unpack_int4_pairs(ckpt[f"{layer}.weight"], dim=0).double()
        scale = ckpt[f"{layer}.weight_scale"].double()
        if f"{layer}.weight_scale_second" in ckpt:
            scale = scale * group_expand(ckpt[f"{layer}.weight_scale_second"], q.shape[1])
        bias = ckpt[f"{layer}.scale_bias"]
        assert bias.shape == (q.shape[0], columns)
        error = relative_error(bias.double().sum(dim=1), 8 * (q * scale).sum(dim=1))
        assert error < (1e-6 if exact else 0.01), error


@pytest.mark.parametrize(
    "recipe, layer", [("w4a8_dynamic", Q_PROJ), ("moe_w4a8_dynamic", f"{EXPERT}.up_proj")]
)
def test_w4a8_scale_bias_is_only_the_npu_kernels_correction(quantized, recipe, layer):
    """Spec §4.5: the A8W4 kernel splits x = 16·x_hi + x_lo' + 8 and re-adds 8·Σ_k W·s as scale_bias.

    Emulating that split on the checkpoint's weights gives exactly the direct product
    s_x·s_w·Σ x_q·W_q, so a kernel that computes the product directly ignores scale_bias.
    """
    ckpt = tensors(quantized(recipe))
    q = unpack_int4_pairs(ckpt[f"{layer}.weight"], dim=0)
    scale = ckpt[f"{layer}.weight_scale"].reshape(-1).double()
    x_q, x_scale = quantize_dynamic_per_token(torch.randn(5, q.shape[1]))
    x_hi = torch.div(x_q.long(), 16, rounding_mode="floor")
    x_lo = (x_q.long() & 0xF) - 8
    assert torch.equal(16 * x_hi + x_lo + 8, x_q.long())
    w = q.double() * scale.unsqueeze(1)
    split = (
        16 * (x_hi.double() @ w.T) + x_lo.double() @ w.T + ckpt[f"{layer}.scale_bias"].double().reshape(1, -1)
    )
    direct = scaled_int8_mm_reference(x_q, None, q, scale)
    torch.testing.assert_close(split, direct, rtol=1e-9, atol=1e-9)


def test_w4a8_differs_from_vllm_ascends_removed_path_by_the_activation_rounding(quantized):
    """vllm-ascend's removed W4A8 linear computed x·(q·s)ᵀ on bf16 activations (a W4A16 product).

    This plugin quantizes the activations per token to int8, as the name says: its output equals
    that weight-only product evaluated on the dequantized activations x_q·s_x, and differs from
    the weight-only product on x by the activation rounding alone.
    """
    ckpt = tensors(quantized("w4a8_dynamic"))
    q = unpack_int4_pairs(ckpt[f"{Q_PROJ}.weight"], dim=0)
    scale = ckpt[f"{Q_PROJ}.weight_scale"].reshape(-1).double()
    x = torch.randn(8, q.shape[1], dtype=torch.float64)
    weight_only = x @ (q.double() * scale.unsqueeze(1)).T  # the removed path
    x_q, x_scale = quantize_dynamic_per_token(x)
    ours = scaled_int8_mm_reference(x_q, x_scale, q, scale)
    on_dequantized = (x_q.double() * x_scale.double().unsqueeze(1)) @ (q.double() * scale.unsqueeze(1)).T
    torch.testing.assert_close(ours, on_dequantized, rtol=1e-9, atol=1e-9)
    difference = relative_error(ours, weight_only)
    print(f"\nW4A8: relative difference to the removed weight-only path {difference:.2e}")
    assert 1e-4 < difference < 2e-2


def test_flatquant_layout(quantized):
    folder = quantized("w4a4_flatquant")
    ckpt = tensors(folder)
    for layer in (
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.mlp.down_proj",
        "model.layers.0.mlp.up_proj",
    ):
        left, right, weight = (
            ckpt[f"{layer}.left_trans"],
            ckpt[f"{layer}.right_trans"],
            ckpt[f"{layer}.weight"],
        )
        assert left.shape[0] * right.shape[0] == weight.shape[1]
        assert int(weight.min()) >= -8 and int(weight.max()) <= 7
    o_proj = "model.layers.0.self_attn.o_proj"
    assert f"{o_proj}.right_trans" not in ckpt and ckpt[f"{o_proj}.left_trans"].shape == (4, 4)
    # q/k/v share one transform, but msmodelslim writes each shard's own clip ratio.
    prefix = "model.layers.1.self_attn"
    assert torch.equal(ckpt[f"{prefix}.q_proj.left_trans"], ckpt[f"{prefix}.k_proj.left_trans"])
    clips = {ckpt[f"{prefix}.{p}_proj.clip_ratio"].item() for p in "qkv"}
    assert len(clips) > 1 and all(0.9 < c < 1 for c in clips)
    assert load_description(folder).settings["model_quant_type"] == "W4A4_DYNAMIC"  # not to be trusted


def test_m4_checkpoint_has_norm_biases_and_folds_linear_biases(quantized):
    ckpt = tensors(quantized("w8a8_static_m4"))
    layer = "model.layers.0"
    assert float(ckpt[f"{layer}.input_layernorm.bias"].abs().max()) > 0.01
    assert float(ckpt[f"{layer}.post_attention_layernorm.bias"].abs().max()) > 0.01
    assert float(ckpt[f"{layer}.self_attn.q_norm.bias"].abs().max()) == 0
    # ERRATA 3: the float q/k/v/gate/up biases are already in quant_bias (ERRATA 2 identity).
    for proj in ("self_attn.q_proj", "mlp.gate_proj"):
        name = f"{layer}.{proj}"
        weight, offset = ckpt[f"{name}.weight"].long(), ckpt[f"{name}.input_offset"].double()
        folded = torch.round(ckpt[f"{name}.bias"].double() / ckpt[f"{name}.deq_scale"].double()).long()
        expected = folded - offset.long() * weight.sum(dim=1)
        assert torch.equal(ckpt[f"{name}.quant_bias"].long(), expected), name
    assert ckpt[f"{layer}.self_attn.q_proj.input_scale"].dtype == torch.bfloat16  # old pipeline dtypes


def test_w8a8_mix_has_static_and_dynamic_tensors(quantized):
    ckpt = tensors(quantized("w8a8_mix"))
    for suffix in ("weight", "quant_bias", "input_scale", "input_offset", "deq_scale", "weight_scale"):
        assert f"{DOWN_PROJ}.{suffix}" in ckpt, suffix
    deq = ckpt[f"{DOWN_PROJ}.deq_scale"].double()
    product = ckpt[f"{DOWN_PROJ}.input_scale"].double() * ckpt[f"{DOWN_PROJ}.weight_scale"].double().reshape(
        -1
    )
    assert relative_error(deq, product) < 0.01
