"""Quantization quality per scheme: perplexity and top-1 agreement through vLLM, vs the BF16 model.

    python benchmarks/accuracy.py [--recipes w8a8_dynamic w4a16 ...] [--moe] [--tokens 256]

One run starts, one after the other in this process, a vLLM engine for the
unquantized demo model in bf16 and for each msmodelslim checkpoint of it
(``quantization="ascend"``, bf16 activations), and scores the held-out texts
(docstrings of modules whose documentation the demo model was not trained on) teacher-forced through
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
import os

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", help="msmodelslim recipes (default: every fast one)")
    parser.add_argument("--moe", action="store_true", help="the tiny Qwen3-MoE instead of the dense model")
    parser.add_argument("--tokens", type=int, default=256, help="tokens per held-out text")
    parser.add_argument("--texts", type=int, default=16, help="held-out texts")
    args = parser.parse_args()

    from vllm_modelslim.examples.msmodelslim_runner import MOE_MODEL_TYPE, RECIPES, quantize
    from vllm_modelslim.examples.perplexity import (
        held_out_sequences,
        perplexity,
        perplexity_target,
        score_with_vllm,
        top1_agreement,
    )
    from vllm_modelslim.examples.tiny_qwen3 import demo_model_dir
    from vllm_modelslim.examples.tiny_qwen3_moe import cached_tiny_qwen3_moe

    model = cached_tiny_qwen3_moe(progress=print) if args.moe else demo_model_dir()
    if not args.recipes:
        fast = [name for name, r in RECIPES.items() if not r.extended and r.model_dtype == "bfloat16"]
        # --moe: the Qwen3-MoE recipes (other MoE families quantize their own models).
        qwen3_moe = {name for name, r in RECIPES.items() if r.msmodelslim_model_type == MOE_MODEL_TYPE}
        args.recipes = [name for name in fast if RECIPES[name].moe == args.moe == (name in qwen3_moe)]
    sequences = held_out_sequences(model, args.texts, args.tokens)
    positions = sum(len(s) - 1 for s in sequences)

    baseline = score_with_vllm(model, None, sequences)
    base_ppl = perplexity(baseline)
    rows = [("BF16 (unquantized)", base_ppl, 0.0, 1.0, None)]
    print(f"measured BF16: perplexity {base_ppl:.3f}", flush=True)
    for recipe in args.recipes:
        scores = score_with_vllm(quantize(model, recipe), "ascend", sequences)
        ppl = perplexity(scores)
        change = ppl / base_ppl - 1
        rows.append((recipe, ppl, change, top1_agreement(scores, baseline), perplexity_target(recipe)))
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
