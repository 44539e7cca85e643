"""Quantization quality per scheme: perplexity and top-1 agreement through vLLM, vs the BF16 model.

    python benchmarks/accuracy.py [--recipes w8a8_dynamic w4a16 ...] [--moe] [--tokens 256]

One run starts, one after the other in this process, a vLLM engine for the
unquantized demo model in bf16 and for each msmodelslim checkpoint of it
(``quantization="ascend"``, bf16 activations), and scores the held-out texts
(module docstrings the demo model was not trained on) teacher-forced through
vLLM's prompt log-probabilities:

* perplexity ``exp(−mean log p(token))`` over every predicted position, and its
  change vs BF16 (targets of issue 8: W8 schemes ≤ +2 %, W4A16/W4A8 ≤ +10 %,
  W4A4 reported only);
* top-1 agreement: share of positions where the checkpoint's most likely next
  token equals the BF16 model's.

The checkpoints are tool-made (real msmodelslim) and cached like the tests'.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

TARGETS = {"W8": 0.02, "W4A16": 0.10, "W4A8": 0.10}
"""Allowed relative perplexity increase by scheme family (issue 8)."""


def target_for(recipe: str) -> float | None:
    name = recipe.removeprefix("moe_").upper()
    if name.startswith("W8"):
        return TARGETS["W8"]
    if name.startswith("W4A16") or name.startswith("W4A8"):
        return TARGETS[name[:5] if name.startswith("W4A16") else "W4A8"]
    return None  # W4A4: reported


def score(
    folder: Path, quantization: str | None, sequences: list[list[int]]
) -> list[list[tuple[float, int]]]:
    from vllm_modelslim.examples.vllm_runner import close_llm, make_llm, prompt_scores

    llm = make_llm(folder, quantization, max_model_len=max(len(s) for s in sequences) + 8)
    scores = prompt_scores(llm, sequences)
    close_llm(llm)
    return scores


def perplexity(scores: list[list[tuple[float, int]]]) -> float:
    logprobs = [lp for sequence in scores for lp, _ in sequence]
    return math.exp(-sum(logprobs) / len(logprobs))


def agreement(scores, baseline) -> float:
    pairs = [(a[1], b[1]) for s, t in zip(scores, baseline, strict=True) for a, b in zip(s, t, strict=True)]
    return sum(a == b for a, b in pairs) / len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", help="msmodelslim recipes (default: every fast one)")
    parser.add_argument("--moe", action="store_true", help="the tiny Qwen3-MoE instead of the dense model")
    parser.add_argument("--tokens", type=int, default=256, help="tokens per held-out text")
    parser.add_argument("--texts", type=int, default=16, help="held-out texts")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from vllm_modelslim.examples.msmodelslim_runner import RECIPES, quantize
    from vllm_modelslim.examples.tiny_qwen3 import cached_tiny_qwen3, held_out_texts
    from vllm_modelslim.examples.tiny_qwen3_moe import cached_tiny_qwen3_moe

    model = cached_tiny_qwen3_moe(progress=print) if args.moe else cached_tiny_qwen3(progress=print)
    if not args.recipes:
        fast = [name for name, r in RECIPES.items() if not r.extended and r.model_dtype == "bfloat16"]
        args.recipes = [name for name in fast if RECIPES[name].moe == args.moe]
    tokenizer = AutoTokenizer.from_pretrained(str(model))
    sequences = [tokenizer(text)["input_ids"][: args.tokens] for text in held_out_texts(args.texts)]
    positions = sum(len(s) - 1 for s in sequences)

    baseline = score(model, None, sequences)
    base_ppl = perplexity(baseline)
    rows = [("BF16 (unquantized)", base_ppl, 0.0, 1.0, None)]
    print(f"measured BF16: perplexity {base_ppl:.3f}", flush=True)
    for recipe in args.recipes:
        scores = score(quantize(model, recipe), "ascend", sequences)
        ppl = perplexity(scores)
        rows.append((recipe, ppl, ppl / base_ppl - 1, agreement(scores, baseline), target_for(recipe)))
        print(f"measured {recipe}: perplexity {ppl:.3f}", flush=True)

    print(f"\n{len(sequences)} held-out texts, {positions} predicted positions, bf16 activations")
    header = f"{'checkpoint':<28}{'perplexity':>12}{'vs BF16':>10}{'top-1 = BF16':>14}{'target':>10}"
    print(header)
    print("-" * len(header))
    for label, ppl, change, top1, target in rows:
        verdict = "" if target is None else ("met" if change <= target else "MISSED")
        goal = "" if target is None else f"≤+{target:.0%}"
        print(f"{label:<28}{ppl:>12.3f}{change:>+10.2%}{top1:>14.1%}{goal:>7} {verdict}")


if __name__ == "__main__":
    main()
