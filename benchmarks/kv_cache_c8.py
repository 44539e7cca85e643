"""Int8 KV cache (ModelSlim C8) vs a bf16 KV cache in vLLM on CPU: capacity and long-context decode speed.

    python benchmarks/kv_cache_c8.py [--context 1920] [--new-tokens 128] [--kv-mib 64]

One run starts, one after the other in this process, three vLLM engines with
the same KV-cache budget (``kv_cache_memory_bytes``), bf16 activations, eager
mode, on the demo model:

* ``C8 int8 cache``: the tool-made W8A8C8 checkpoint (msmodelslim ``dynamic_cache``),
  the cache stored as int8 (the default);
* ``C8 bf16 cache``: the same checkpoint with ``additional_config=
  {"modelslim_kv_cache_storage": "model-dtype"}``: identical numerics, the
  round-tripped keys/values stored in bf16;
* ``W8A8, no C8``: the W8A8 static checkpoint without KV quantization (bf16 cache).

For each it prints the cache capacity in tokens (vLLM's block count × block
size) and decode tokens/s at batch 1 and 4 after a ``--context``-token prompt
(``(t(1 + T) − t(1)) / T`` with ``ignore_eos``), each as a ratio to the W8A8
bf16-cache engine measured in the same run. The demo model is tiny (4 layers,
2 KV heads of 64), so attention is a small share of a decode step; the
capacity ratio is what transfers to large models.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

from decode_speed import timed_generate  # noqa: E402  (sibling benchmark script)


def measure(folder, storage: str | None, args) -> dict[str, float]:
    from vllm_modelslim.examples.vllm_runner import close_llm, make_llm

    extra = {"additional_config": {"modelslim_kv_cache_storage": storage}} if storage else {}
    llm = make_llm(
        folder,
        max_model_len=args.context + args.new_tokens,
        kv_cache_memory_bytes=args.kv_mib * 2**20,
        enable_prefix_caching=False,
        **extra,
    )
    try:
        config = llm.llm_engine.vllm_config.cache_config
        row = {"capacity": float(config.num_gpu_blocks * config.block_size)}
        rng = random.Random(0)
        for batch in (1, 4):
            prompts = [[rng.randrange(10, 4000) for _ in range(args.context)] for _ in range(batch)]
            timed_generate(llm, prompts, 2)  # warm-up
            decode = []
            for _ in range(args.repeats):
                prefill = timed_generate(llm, prompts, 1)
                total = timed_generate(llm, prompts, 1 + args.new_tokens)
                decode.append(batch * args.new_tokens / (total - prefill))
            row[f"decode_b{batch}"] = statistics.median(decode)
        return row
    finally:
        close_llm(llm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=int, default=1920, help="prompt tokens (≤ 2048 − new)")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--kv-mib", type=int, default=64, help="KV-cache budget of every engine (MiB)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from vllm_modelslim.examples.msmodelslim_runner import quantize
    from vllm_modelslim.examples.tiny_qwen3 import demo_model_dir

    model = demo_model_dir()
    c8, w8a8 = quantize(model, "w8a8c8", log=print), quantize(model, "w8a8_static", log=print)
    runs = {
        "C8 int8 cache": measure(c8, "int8", args),
        "C8 bf16 cache": measure(c8, "model-dtype", args),
        "W8A8, no C8 (bf16 cache)": measure(w8a8, None, args),
    }
    base = runs["W8A8, no C8 (bf16 cache)"]
    print(
        f"\nKV budget {args.kv_mib} MiB, context {args.context} tokens, {args.new_tokens} decoded tokens, "
        "bf16 activations, eager; ratios vs the W8A8 bf16-cache engine"
    )
    print(f"{'engine':28s} {'cache tokens':>20s} {'decode tok/s b=1':>20s} {'decode tok/s b=4':>20s}")
    for name, row in runs.items():
        cells = [f"{row[k]:.0f} ({row[k] / base[k]:.2f}×)" for k in ("capacity", "decode_b1", "decode_b4")]
        print(f"{name:28s} " + " ".join(f"{c:>20s}" for c in cells))


if __name__ == "__main__":
    main()
