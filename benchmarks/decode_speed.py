"""Decode and prefill speed of each msmodelslim checkpoint of the demo model in vLLM, vs BF16/FP32.

    python benchmarks/decode_speed.py [--recipes w8a8_dynamic w4a16 ...] [--new-tokens 128] [--eager]
    python benchmarks/decode_speed.py --moe    # the tiny Qwen3-MoE and its msmodelslim checkpoints

One run starts, one after the other in this process, a vLLM engine (vLLM's
default torch.compile mode, ``--eager`` for eager mode) for the unquantized
demo model in bf16 and in fp32 and for each quantized checkpoint
(``quantization="ascend"``, bf16 activations), and measures with greedy
decoding and ``ignore_eos``:

* prefill tokens/s: one prompt of ``--prompt-tokens`` tokens, ``max_tokens=1``;
* decode tokens/s at batch 1 and batch 8: ``(t(1 + T) − t(1))`` for ``T`` new tokens.

Every figure is also printed as a ratio to the best unquantized run (bf16 or
fp32) of the same phase, measured in the same run. The demo model is tiny
(hidden 256), so per-op overheads dominate (in eager mode the quantized layers'
extra small ops make decoding slower than bf16; compiled, inductor fuses
them) and the ratios say little about large models; ``benchmarks/kernels.py``
measures the GEMMs alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")


def timed_generate(llm, prompts: list[list[int]], max_tokens: int) -> float:
    from vllm import SamplingParams, TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    start = time.perf_counter()
    llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    return time.perf_counter() - start


def measure(folder: Path, quantization: str | None, dtype: str, args) -> dict[str, float]:
    from vllm_modelslim.examples.vllm_runner import close_llm, make_llm

    llm = make_llm(
        folder,
        quantization,
        dtype=dtype,
        max_model_len=args.prompt_tokens + args.new_tokens + 8,
        enforce_eager=args.eager,
    )
    prompt = [(7 * i) % 4000 + 10 for i in range(args.prompt_tokens)]
    short = [prompt[: 16 + b] for b in range(8)]
    result = {}
    timed_generate(llm, [prompt], 4)  # warm-up
    result["prefill tok/s"] = args.prompt_tokens / statistics.median(
        timed_generate(llm, [prompt], 1) for _ in range(args.repeats)
    )
    for batch in (1, 8):
        prompts = short[:batch]
        first = statistics.median(timed_generate(llm, prompts, 1) for _ in range(args.repeats))
        full = statistics.median(
            timed_generate(llm, prompts, 1 + args.new_tokens) for _ in range(args.repeats)
        )
        result[f"decode b{batch} tok/s"] = batch * args.new_tokens / (full - first)
    close_llm(llm)
    result["weights MiB"] = sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", help="msmodelslim recipes (default: every fast one)")
    parser.add_argument("--moe", action="store_true", help="the tiny Qwen3-MoE instead of the dense model")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--eager", action="store_true", help="eager mode (default: vLLM's default torch.compile mode)"
    )
    args = parser.parse_args()

    import torch

    from vllm_modelslim.examples.msmodelslim_runner import RECIPES, quantize
    from vllm_modelslim.examples.tiny_qwen3 import demo_model_dir
    from vllm_modelslim.examples.tiny_qwen3_moe import cached_tiny_qwen3_moe

    model = cached_tiny_qwen3_moe(progress=print) if args.moe else demo_model_dir()
    if not args.recipes:
        fast = [name for name, r in RECIPES.items() if not r.extended and r.model_dtype == "bfloat16"]
        args.recipes = [name for name in fast if RECIPES[name].moe == args.moe and "asym" not in name]
    runs = [("BF16", model, None, "bfloat16"), ("FP32", model, None, "float32")]
    runs += [(recipe, quantize(model, recipe), "ascend", "bfloat16") for recipe in args.recipes]
    results = {}
    for label, folder, quantization, dtype in runs:
        results[label] = measure(folder, quantization, dtype, args)
        print(
            f"measured {label}: " + ", ".join(f"{k} {v:.1f}" for k, v in results[label].items()), flush=True
        )

    metrics = list(results["BF16"])
    best = {m: max(results["BF16"][m], results["FP32"][m]) for m in metrics if m != "weights MiB"}
    print(
        f"\nthreads={torch.get_num_threads()} new tokens={args.new_tokens} prompt={args.prompt_tokens} tokens"
    )
    header = f"{'run':<24}" + "".join(f"{m:>18}" for m in metrics)
    print(header)
    print("-" * len(header))
    for label, values in results.items():
        cells = []
        for metric in metrics:
            if metric == "weights MiB":
                cells.append(f"{values[metric]:>9.2f} ({values[metric] / results['BF16'][metric]:.2f}x)")
            else:
                cells.append(f"{values[metric]:>9.1f} ({values[metric] / best[metric]:.2f}x)")
        print(f"{label:<24}" + "".join(f"{c:>18}" for c in cells))
    print("ratios: speed vs the best of BF16/FP32 for that phase; weights vs BF16")


if __name__ == "__main__":
    main()
