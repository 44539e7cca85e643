"""Micro-benchmarks of the quantized linear kernels against float matmul (same threads).

    python benchmarks/kernels.py [--k 4096 --n 4096 --threads 2]

For M = 1, 8, 256 it times, per call: bf16 and fp32 ``matmul`` (baselines),
the W8A8_DYNAMIC forward (per-token quantization + selected int8 GEMM kernel +
epilogue), the W8A8 static forward and the W8A16 forward with each available
weight-only kernel, and prints milliseconds and the ratio to bf16 measured in
the same run (> 1 means faster than bf16).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vllm_modelslim.kernels import (
    make_scaled_int8_mm,
    make_weight_only_int8,
    quantize_dynamic_per_token,
    quantize_static_per_tensor,
)
from vllm_modelslim.kernels.platform import cpu_flags, cpu_has_int8_dot
from vllm_modelslim.kernels.weight_only_int8 import WEIGHT_ONLY_INT8_KERNELS, WeightOnlyInt8Config


def median_ms(fn, min_seconds: float = 0.5, min_runs: int = 5) -> float:
    fn()
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, default=4096)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--m", type=int, nargs="+", default=[1, 8, 256])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    k, n = args.k, args.n
    isa = torch.backends.cpu.get_cpu_capability()
    int8_flags = ", ".join(sorted(f for f in cpu_flags() if "vnni" in f or "amx" in f)) or "none"
    print(
        f"K={k} N={n} threads={args.threads} torch={torch.__version__} cpu capability={isa} "
        f"int8 dot product={cpu_has_int8_dot()} ({int8_flags})"
    )
    w_q = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    scale = torch.rand(n) * 1e-2 + 1e-3
    zero_point = torch.randint(-20, 20, (n,)).float()
    w_bf16 = torch.randn(n, k, dtype=torch.bfloat16)
    dynamic = make_scaled_int8_mm(w_q, scale)
    static = make_scaled_int8_mm(w_q, scale, torch.zeros(n, dtype=torch.int32))
    weight_only = {}
    for kernel in WEIGHT_ONLY_INT8_KERNELS:
        config = WeightOnlyInt8Config(k, n, torch.bfloat16, True)
        if kernel.is_supported("cpu")[0] and kernel.can_implement(config)[0] and kernel.name != "reference":
            weight_only[kernel.name] = make_weight_only_int8(
                w_q, scale, zero_point, torch.bfloat16, kernel=kernel
            )
    print(f"W8A8 kernel: {type(dynamic).__name__}; W8A16 kernels: {', '.join(weight_only)}")
    header = f"{'M':>4} {'case':<28} {'ms':>9} {'x bf16':>8}"
    print(header)
    print("-" * len(header))
    for m in args.m:
        x = torch.randn(m, k, dtype=torch.bfloat16)
        baseline = None
        for name, fn in cases_for(x, w_bf16, dynamic, static, weight_only).items():
            ms = median_ms(fn)
            baseline = baseline or ms
            print(f"{m:>4} {name:<28} {ms:>9.3f} {baseline / ms:>8.2f}")


def cases_for(x, w_bf16, dynamic, static, weight_only) -> dict:
    """The timed callables for one activation batch ``x`` (bf16 ``[M, K]``)."""
    xf, w_fp32 = x.float(), w_bf16.float()
    cases = {
        "bf16 matmul": lambda: x @ w_bf16.T,
        "fp32 matmul": lambda: xf @ w_fp32.T,
        "W8A8_DYNAMIC forward": lambda: dynamic(*quantize_dynamic_per_token(x), None, torch.bfloat16),
        "W8A8 static forward": lambda: static(
            quantize_static_per_tensor(x, 0.05, 3), None, None, torch.bfloat16
        ),
    }
    for name, layer in weight_only.items():
        cases[f"W8A16 forward ({name})"] = lambda layer=layer: layer(x, None)
    return cases


if __name__ == "__main__":
    main()
