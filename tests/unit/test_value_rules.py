"""Value rules of the tensor declarations: what each accepts and refuses, and which tensors carry which."""

from __future__ import annotations

import math

import pytest
import torch

from vllm_modelslim.format import InvalidScaleError
from vllm_modelslim.format.value_checks import ValueRule, check_value_rule
from vllm_modelslim.schemes.linear import checkpoint_tensors as ct

CASES = [
    (ValueRule.POSITIVE, [0.5, 1e-8, 3.0], [[0.0], [-1.0], [math.nan], [math.inf]]),
    (ValueRule.FINITE, [-3.0, 0.0, 7.5], [[math.nan], [-math.inf]]),
    (ValueRule.INT8, [-128.0, 0.0, 127.0], [[128.0], [-129.0], [2.5], [math.nan]]),
    (ValueRule.ZERO, [0.0, -0.0], [[1.0], [-1e-9]]),
    (ValueRule.RATIO, [1.0, 0.98, 1e-3], [[0.0], [1.01], [math.nan], [-0.5]]),
]


@pytest.mark.parametrize("rule, good, bads", CASES, ids=[c[0].value for c in CASES])
def test_rule_accepts_good_values_and_names_layer_and_file_for_bad_ones(rule, good, bads):
    check_value_rule(torch.tensor(good), rule, what="t", layer="model.layers.0.x", file="w.safetensors")
    for bad in bads:
        values = torch.tensor(good + bad)
        with pytest.raises(InvalidScaleError) as info:
            check_value_rule(values, rule, what="t", layer="model.layers.0.x", file="w.safetensors")
        assert "w.safetensors" in str(info.value) and "model.layers.0.x" in str(info.value)


def test_any_accepts_everything():
    check_value_rule(torch.tensor([math.nan, -1.0]), ValueRule.ANY, what="t", layer="l", file=None)


def test_declarations_carry_the_rules_the_spec_requires():
    positive = [ct.WEIGHT_SCALE, ct.OPTIONAL_WEIGHT_SCALE, ct.DEQ_SCALE, ct.INPUT_SCALE]
    positive += [ct.GROUP_WEIGHT_SCALE, ct.SECOND_WEIGHT_SCALE]
    assert all(spec.values is ValueRule.POSITIVE for spec in positive)
    assert ct.INPUT_OFFSET.values is ValueRule.INT8
    assert ct.WEIGHT_OFFSET.values is ValueRule.FINITE and ct.GROUP_WEIGHT_OFFSET.values is ValueRule.FINITE
    assert ct.SYMMETRIC_WEIGHT_OFFSET.values is ValueRule.ZERO
    assert ct.SECOND_WEIGHT_OFFSET.values is ValueRule.ZERO
    assert ct.CLIP_RATIO.values is ValueRule.RATIO
    assert ct.LEFT_TRANS.values is ValueRule.FINITE and ct.RIGHT_TRANS.values is ValueRule.FINITE
    # scale_bias may be negative (a sum of signed weights), quant_bias is an integer bias.
    assert ct.scale_bias(True).values is ValueRule.ANY and ct.QUANT_BIAS.values is ValueRule.ANY


def test_deq_scale_rule_applies_to_the_decoded_fp32_values():
    bits = torch.tensor([0.25, 2.0], dtype=torch.float32).view(torch.int32).to(torch.int64)
    check_value_rule(ct.DEQ_SCALE.decode(bits), ct.DEQ_SCALE.values, what="deq_scale", layer="l", file="f")
    negative = torch.tensor([-0.25], dtype=torch.float32).view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    with pytest.raises(InvalidScaleError):
        check_value_rule(ct.DEQ_SCALE.decode(negative), ValueRule.POSITIVE, what="d", layer="l", file="f")
