"""Quantization quality through vLLM: held-out perplexity and top-1 agreement with the BF16 model.

Used by ``benchmarks/accuracy.py`` (the full table) and by the CI subset
(``tests/engine/test_accuracy_subset.py``). Scores come from vLLM's prompt
log-probabilities (teacher forcing), so every position of every held-out
text is predicted from the true prefix.
"""

from __future__ import annotations

import math
from pathlib import Path

PERPLEXITY_TARGETS: dict[str, float] = {"W8": 0.02, "W4A16": 0.10, "W4A8": 0.10}
"""Allowed relative perplexity increase over BF16 per scheme family (issue 8); W4A4 is reported only."""

Scores = list[list[tuple[float, int]]]
"""Per sequence, per predicted position: ``(log p(actual token) in nats, top-1 token id)``."""


def perplexity_target(recipe: str) -> float | None:
    """The allowed relative perplexity increase for an msmodelslim recipe name, or None (W4A4: reported)."""
    name = recipe.removeprefix("moe_").upper()
    if name.startswith("W8"):
        return PERPLEXITY_TARGETS["W8"]
    if name.startswith("W4A16"):
        return PERPLEXITY_TARGETS["W4A16"]
    if name.startswith("W4A8"):
        return PERPLEXITY_TARGETS["W4A8"]
    return None


def held_out_sequences(model_dir: Path, count: int, tokens: int) -> list[list[int]]:
    """Token ids of the first ``count`` held-out texts, at most ``tokens`` each (``model_dir``'s tokenizer).

    The texts are :func:`~vllm_modelslim.examples.tiny_qwen3.held_out_texts`.
    """
    from transformers import AutoTokenizer

    from vllm_modelslim.examples.tiny_qwen3 import held_out_texts

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return [tokenizer(text)["input_ids"][:tokens] for text in held_out_texts(count)]


def score_with_vllm(folder: Path, quantization: str | None, sequences: list[list[int]]) -> Scores:
    """Start an engine for ``folder`` (bf16), score ``sequences`` teacher-forced, close the engine."""
    from vllm_modelslim.examples.vllm_runner import close_llm, make_llm, prompt_scores

    llm = make_llm(folder, quantization, max_model_len=max(len(s) for s in sequences) + 8)
    try:
        return prompt_scores(llm, sequences)
    finally:
        close_llm(llm)


def perplexity(scores: Scores) -> float:
    """``exp(−mean log p)`` over every predicted position of every sequence."""
    logprobs = [lp for sequence in scores for lp, _ in sequence]
    return math.exp(-sum(logprobs) / len(logprobs))


def top1_agreement(scores: Scores, baseline: Scores) -> float:
    """Share of positions whose top-1 token equals the baseline's (same sequences, same positions).

    Raises:
        ValueError: the two score lists do not cover the same positions.
    """
    pairs = [(a[1], b[1]) for s, t in zip(scores, baseline, strict=True) for a, b in zip(s, t, strict=True)]
    return sum(a == b for a, b in pairs) / len(pairs)
