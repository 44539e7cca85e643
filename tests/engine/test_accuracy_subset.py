"""The CI subset of the accuracy table (benchmarks/accuracy.py): held-out perplexity through vLLM vs BF16.

The trained demo model and tool-made msmodelslim checkpoints of it, bf16
engines, 12 held-out texts × 128 tokens scored teacher-forced from vLLM's
prompt log-probabilities. Targets are issue 8's: W8 schemes ≤ +2 %
perplexity, W4A16/W4A8 ≤ +10 %. The BF16 perplexity itself must show a
trained model (~130 with the committed model; a random or broken one scores in the thousands).
"""

from __future__ import annotations

import pytest

from vllm_modelslim.examples.perplexity import (
    held_out_sequences,
    perplexity,
    perplexity_target,
    score_with_vllm,
    top1_agreement,
)

pytestmark = pytest.mark.engine

RECIPES = ("w8a8_dynamic", "w8a8_static", "w4a16", "w4a8_dynamic")
BF16_PERPLEXITY_CEILING = 200.0
TOP1_FLOOR = {"W8": 0.9, "W4": 0.85}


@pytest.fixture(scope="module")
def sequences(demo_model) -> list[list[int]]:
    return held_out_sequences(demo_model, 12, 128)


@pytest.fixture(scope="module")
def bf16_scores(demo_model, sequences):
    return score_with_vllm(demo_model, None, sequences)


def test_the_demo_model_is_trained(bf16_scores):
    assert perplexity(bf16_scores) < BF16_PERPLEXITY_CEILING


@pytest.mark.parametrize("recipe", RECIPES)
def test_perplexity_change_meets_the_target(recipe, quantized, sequences, bf16_scores):
    scores = score_with_vllm(quantized(recipe), "ascend", sequences)
    change = perplexity(scores) / perplexity(bf16_scores) - 1
    top1 = top1_agreement(scores, bf16_scores)
    print(f"{recipe}: perplexity {change:+.2%} vs BF16, top-1 = BF16 {top1:.1%}")
    assert change <= perplexity_target(recipe)
    assert top1 >= TOP1_FLOOR[recipe[:2].upper()]
