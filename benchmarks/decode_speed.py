"""Prefill and decode speed, memory and weight bytes of each quantized checkpoint in vLLM, vs BF16/FP32.

    python benchmarks/decode_speed.py                 # hidden-2048, 8-layer random Qwen3
    python benchmarks/decode_speed.py --model quick   # hidden-1024, 4 layers (a few minutes)
    python benchmarks/decode_speed.py --model demo    # the trained demo model (hidden 256)
    python benchmarks/decode_speed.py --model moe-large   # random Qwen3-MoE, Qwen3-30B-A3B proportions
    python benchmarks/decode_speed.py --moe           # the tiny Qwen3-MoE and its checkpoints
    python benchmarks/decode_speed.py --glm4-moe      # the tiny GLM-4.5 MoE and its checkpoints
    python benchmarks/decode_speed.py --recipes w8a8_dynamic w4a16 ...
    python benchmarks/decode_speed.py --llmcompressor w8a8_dynamic w4a16_channel   # compressed-tensors

The ``full`` and ``quick`` models are random-weight Qwen3s large enough that
the GEMMs dominate, ``moe-large`` a random-weight Qwen3-MoE (hidden 2048, 32
experts of intermediate size 768, top-4, 4 layers; ``benchmarks/speed_model.py``);
every checkpoint is made from them by the real msmodelslim (cached; the
GPTQ-based W4A16 takes ~6 min on the full model; ``moe-large`` defaults to
W8A8_DYNAMIC, W4A8_DYNAMIC per-channel experts and W8A16, ~1 min each). One
run starts, one after the other, each in a fresh process, a vLLM engine
(vLLM's default torch.compile mode, ``--eager`` for eager mode) for the
unquantized model in bf16 and in fp32 and for each quantized checkpoint
(``quantization="ascend"``, bf16 activations), and
measures with greedy decoding and ``ignore_eos``:

* prefill tokens/s: one prompt of ``--prompt-tokens`` tokens, ``max_tokens=1``,
  with vLLM's prefix cache off (the timings repeat one prompt; until
  2026-12-01 the cache was on and this column mostly timed cache hits);
* decode tokens/s at batch 1 and batch 8: ``(t(1 + T) − t(1))`` for ``T`` new tokens;
* memory (``benchmarks/run_facts.py``; vLLM's engine runs inside the
  measuring process, ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, tp=1):
  ``peak RSS``: the process's own high-water mark (``VmHWM``) over loading,
  compiling and decoding; ``tree peak``: the largest RSS of the process plus
  its children (torch.compile's compile workers) sampled every 50 ms from
  start until the timing begins; ``steady RSS``: process and children after
  the timed decoding, i.e. what serving holds (weights, 256 MiB KV cache,
  runtime). Not ``ru_maxrss``: a spawned process inherits its parent's;
* weight bytes: every parameter and buffer the engine's model holds after
  loading, embeddings and LM head excluded (so a kept float copy would show).

``--profile STEPS`` adds, per run, torch.profiler's table of one batch-1
generation of ``STEPS`` decode steps (ops by self CPU time, and the wall time).

The header names the host's CPU and ISA flags (``run_facts.host_isa``) and,
under the table, each run lists the kernel the plugin chose per scheme (its
"Selected kernel" log lines; "vLLM's own" for the unquantized runs).

``--llmcompressor SCHEME ...`` adds LLM-Compressor checkpoints of the same
model (``examples/llmcompressor_runner.py``, cached), each run twice: with
this plugin's kernels (``ct-<scheme>``: ``VLLM_MODELSLIM_CT_KERNELS=always``)
and with vLLM's own CPU path (``ct-<scheme> vLLM``: ``=never``);
an engine that does not start is reported with its error.

Every speed is printed with its ratio to the best unquantized run (bf16 or
fp32) of the same phase and to BF16, memory with its ratio to BF16, all
measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

SPEED_METRICS = ("prefill tok/s", "decode b1 tok/s", "decode b8 tok/s")
MEMORY_METRICS = ("peak RSS MiB", "tree peak MiB", "steady RSS MiB", "weights MiB")


def weight_bytes(model) -> int:
    """Bytes of the distinct storages of every parameter and buffer outside the embedding and LM head,
    plus the weight copies kernels keep outside torch (``external_weight_bytes``, e.g. oneDNN's;
    vLLM's own unquantized CPU layers keep theirs in oneDNN too: counted at their logical size)."""
    storages: dict[int, int] = {}
    external = 0
    for name, module in model.named_modules():
        if "embed_tokens" in name or "lm_head" in name:
            continue
        external += getattr(module, "external_weight_bytes", 0)
        weight = getattr(module, "weight", None)
        if type(getattr(module, "quant_method", None)).__name__ == "UnquantizedLinearMethod" and not (
            weight is None or weight.numel()
        ):
            # vLLM-CPU moved the float weight into a prepacked oneDNN copy: count its logical size
            # (a MoE router, GateLinear, has no per-partition sizes: it is replicated).
            n = getattr(module, "output_size_per_partition", None) or module.output_size
            k = getattr(module, "input_size_per_partition", None) or module.input_size
            external += n * k * weight.element_size()
        tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        for tensor in tensors:
            if tensor is not None and tensor.numel():
                storage = tensor.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values()) + external


def timed_generate(llm, prompts: list[list[int]], max_tokens: int) -> float:
    from vllm import SamplingParams, TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    start = time.perf_counter()
    llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    return time.perf_counter() - start


def measure(
    folder: Path, quantization: str | None, dtype: str, args, env: dict[str, str] | None = None
) -> dict[str, float | str]:
    """Speeds, memory and kernels of one engine (run in a fresh process: the peaks are per process)."""
    os.environ.update(env or {})  # before vLLM loads the plugin in this process
    from run_facts import KernelChoices, TreeRssSampler, peak_rss_bytes, tree_rss_bytes
    from vllm_modelslim.examples.vllm_runner import close_llm, make_llm

    sampler = TreeRssSampler().start()
    with KernelChoices() as kernels:
        llm = make_llm(
            folder,
            quantization,
            dtype=dtype,
            max_model_len=args.prompt_tokens + args.new_tokens + 8,
            enforce_eager=args.eager,
            # every timing repeats the same prompt: with vLLM's prefix cache on, the "prefill"
            # would mostly be cache hits (measured: BF16 1798 tok/s cached, 465 tok/s computed)
            enable_prefix_caching=False,
        )
        prompt = [(7 * i) % 4000 + 10 for i in range(args.prompt_tokens)]
        short = [prompt[: 16 + b] for b in range(8)]
        result: dict[str, float | str] = {}
        timed_generate(llm, [prompt], 4)  # warm-up (compiles the prefill shape)
        timed_generate(llm, short, 4)  # and batched decode
    tree_peak = sampler.stop()  # no sampling thread while timing
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
    result["steady RSS MiB"] = tree_rss_bytes() / 2**20
    result["peak RSS MiB"] = peak_rss_bytes() / 2**20
    result["tree peak MiB"] = max(tree_peak, tree_rss_bytes()) / 2**20
    result["weights MiB"] = llm.apply_model(weight_bytes)[0] / 2**20
    result["kernels"] = kernels.summary()
    result["load average"] = os.getloadavg()[0]  # of the whole host: others' work slows the timings
    if args.profile:
        result["profile"] = profile_decode(llm, short[0], args.profile)
    close_llm(llm)
    return result


def profile_decode(llm, prompt: list[int], steps: int, rows: int = 25) -> str:
    """torch.profiler's table (self CPU time per op, top ``rows``) of one batch-1 generation.

    The generation is the prefill of ``prompt`` (short) then ``steps`` decode
    steps; the header gives its wall time, so time outside the listed ops
    (Python: vLLM's scheduler, the plugin's dispatch) is the difference.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        wall = timed_generate(llm, [prompt], 1 + steps)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    return f"prefill of {len(prompt)} tokens + {steps} decode steps: {wall * 1e3:.0f} ms wall\n{table}"


def measure_in_subprocess(
    folder: Path, quantization: str | None, dtype: str, args, env: dict[str, str] | None = None
) -> dict[str, float | str]:
    """:func:`measure` in a fresh spawned process."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(measure, folder, quantization, dtype, args, env).result()


W8_TYPES = ("w8a8", "w8a16")
MOE_LARGE_RECIPES = ("moe_w8a8_dynamic", "moe_w4a8_dynamic", "moe_w8a16")
"""``--model moe-large``'s default recipes (W4A8_DYNAMIC: per-channel experts, W8A8_DYNAMIC attention)."""
DEFAULTS = {"full": (512, 32), "quick": (512, 64), "demo": (256, 128), "moe-large": (512, 32)}
"""Per model: prompt tokens, new tokens."""


def targets(recipe: str, values: dict[str, float], best: dict[str, float], bf16: dict[str, float]) -> str:
    """Which of issue 6's targets ``values`` meets (decode b1, prefill, weight memory)."""
    w8 = recipe.removeprefix("glm4_").removeprefix("moe_").startswith(W8_TYPES)
    checks = [
        (
            f"decode b1 ≥ {1.8 if w8 else 2.5}x",
            values["decode b1 tok/s"] / best["decode b1 tok/s"] >= (1.8 if w8 else 2.5),
        ),
        ("prefill ≥ 0.9x best", values["prefill tok/s"] / best["prefill tok/s"] >= 0.9),
        ("prefill ≥ 2x BF16", values["prefill tok/s"] / bf16["prefill tok/s"] >= 2.0),
        (
            f"weights ≤ {0.55 if w8 else 0.30}x",
            values["weights MiB"] / bf16["weights MiB"] <= (0.55 if w8 else 0.30),
        ),
    ]
    return "; ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in checks)


def print_report(results: dict[str, dict[str, float | str]], model_name: str, args) -> None:
    """The table (ratios to the same run's BF16/FP32), host line, kernels, targets and profiles."""
    import torch

    from run_facts import host_isa

    bf16 = results["BF16"]
    best = {m: max(bf16[m], results["FP32"][m]) for m in SPEED_METRICS}
    print(
        f"\nmodel={model_name} threads={torch.get_num_threads()} prompt={args.prompt_tokens} tokens "
        f"new tokens={args.new_tokens} {'eager' if args.eager else 'torch.compile'} ({sys.platform})"
    )
    print(f"CPU: {host_isa()}; load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("| run | " + " | ".join(SPEED_METRICS + MEMORY_METRICS) + " |")
    print("|---" * (1 + len(SPEED_METRICS) + len(MEMORY_METRICS)) + "|")
    for label, values in results.items():
        cells = [
            f"{values[m]:.1f} ({values[m] / best[m]:.2f}x best, {values[m] / bf16[m]:.2f}x BF16)"
            for m in SPEED_METRICS
        ]
        cells += [f"{values[m]:.0f} ({values[m] / bf16[m]:.2f}x)" for m in MEMORY_METRICS]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("speed: ratio to the best of BF16/FP32 for that phase and to BF16; memory: ratio to BF16")
    print("kernels chosen (scheme/purpose: kernel):")
    for label, values in results.items():
        print(f"  {label} (host load {values['load average']:.1f}): {values['kernels']}")
    for label, values in results.items():
        if label not in ("BF16", "FP32"):
            print(f"{label}: {targets(label.removeprefix('ct-'), values, best, bf16)}")
    for label, values in results.items():
        if "profile" in values:
            print(f"\nprofile of {label}: {values['profile']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=tuple(DEFAULTS), default="full")
    parser.add_argument("--recipes", nargs="+", help="msmodelslim recipes (default: one per quant type)")
    parser.add_argument(
        "--llmcompressor",
        nargs="+",
        default=[],
        help="LLM-Compressor schemes to add (ours and vLLM's path); alone, no msmodelslim recipes run",
    )
    parser.add_argument(
        "--moe", action="store_true", help="the tiny Qwen3-MoE (upcycled from the demo model)"
    )
    parser.add_argument("--new-tokens", type=int, help="decode steps timed (default per model: 32/64/128)")
    parser.add_argument("--prompt-tokens", type=int, help="prefill prompt length (default 512; 256 for demo)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="STEPS",
        help="after measuring, profile STEPS batch-1 decode steps per run (torch.profiler, ops by self time)",
    )
    parser.add_argument(
        "--eager", action="store_true", help="eager mode (default: vLLM's default torch.compile mode)"
    )
    parser.add_argument(
        "--glm4-moe", action="store_true", help="the tiny GLM-4.5 MoE (upcycled from the demo model)"
    )
    args = parser.parse_args()
    if args.moe or args.glm4_moe:
        args.model = "demo"
    prompt_tokens, new_tokens = DEFAULTS[args.model]
    args.prompt_tokens = args.prompt_tokens or prompt_tokens
    args.new_tokens = args.new_tokens or new_tokens

    from speed_model import build_speed_model
    from vllm_modelslim.examples.msmodelslim_runner import RECIPES, quantize
    from vllm_modelslim.examples.tiny_glm4_moe import cached_tiny_glm4_moe
    from vllm_modelslim.examples.tiny_qwen3 import demo_model_dir
    from vllm_modelslim.examples.tiny_qwen3_moe import cached_tiny_qwen3_moe

    if args.moe:
        model = cached_tiny_qwen3_moe(progress=print)
    elif args.glm4_moe:
        model = cached_tiny_glm4_moe(progress=print)
    else:
        model = demo_model_dir() if args.model == "demo" else build_speed_model(args.model)
    moe_large = args.model == "moe-large"
    if args.llmcompressor and not args.recipes:
        args.recipes = []
    elif moe_large and not args.recipes:
        args.recipes = list(MOE_LARGE_RECIPES)
    elif not args.recipes:
        fast = [name for name, r in RECIPES.items() if not r.extended and r.model_dtype == "bfloat16"]
        skip = ("asym", "c8", "mix", "m4")
        family = "glm4_moe_" if args.glm4_moe else "moe_" if args.moe else ""
        args.recipes = [
            n for n in fast
            if RECIPES[n].moe == bool(family) and n.startswith(family)
            and not any(s in n.removeprefix(family) for s in skip)
        ]  # fmt: skip
    from vllm_modelslim.examples.llmcompressor_runner import quantize_with_llmcompressor
    from vllm_modelslim.plugin.compressed_tensors import KERNELS_ENV

    runs = [("BF16", model, None, "bfloat16", {}), ("FP32", model, None, "float32", {})]
    runs += [(recipe, quantize(model, recipe), "ascend", "bfloat16", {}) for recipe in args.recipes]
    for scheme in args.llmcompressor:
        folder = quantize_with_llmcompressor(model, scheme)
        runs += [
            (f"ct-{scheme}", folder, None, "bfloat16", {KERNELS_ENV: "always"}),
            (f"ct-{scheme} vLLM", folder, None, "bfloat16", {KERNELS_ENV: "never"}),
        ]
    results = {}
    for label, folder, quantization, dtype, env in runs:
        try:
            results[label] = measure_in_subprocess(folder, quantization, dtype, args, env)
        except Exception as error:  # e.g. vLLM's own path has no CPU kernel for this scheme
            print(f"{label}: the engine did not run: {str(error).splitlines()[-1][:300]}", flush=True)
            continue
        print(
            f"measured {label}: "
            + ", ".join(
                f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                for k, v in results[label].items()
                if k != "profile"
            ),
            flush=True,
        )

    print_report(results, model.name, args)


if __name__ == "__main__":
    main()
