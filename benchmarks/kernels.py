"""Micro-benchmarks of the quantized linear forwards against float matmul (same threads).

    python benchmarks/kernels.py [--k 4096 --n 4096 --m 1 8 256 --threads 2]

For each M it times, per call, bf16 and fp32 ``matmul`` (baselines) and each
scheme's whole forward as the plugin runs it (activation quantization,
selected kernel, epilogue): W8A8_DYNAMIC, W8A8 static, W8A16 (each weight-only
int8 kernel), W4A16 g128 (each weight-only int4 kernel), W4A8_DYNAMIC
per-channel and per-group g128, W4A4_DYNAMIC and FlatQuant (64 × 64
transform). It prints milliseconds and the ratio to bf16 measured in the same
run (> 1 means faster than bf16) and to the fastest unquantized GEMM of the
run. With vLLM installed it adds vLLM-CPU's prepacked oneDNN GEMMs: bf16 and
fp32 (what vLLM runs for unquantized models on this CPU) and its W8A8 int8
path (compressed-tensors checkpoints).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from timing import median_ms
from vllm_modelslim.kernels import (
    kronecker_transform,
    make_scaled_int8_mm,
    make_weight_only_int4,
    make_weight_only_int8,
    quantize_dynamic_per_token,
    quantize_static_per_tensor,
)
from vllm_modelslim.kernels.platform import cpu_flags, cpu_has_int8_dot
from vllm_modelslim.kernels.weight_only import (
    WEIGHT_ONLY_INT4_KERNELS,
    WEIGHT_ONLY_INT8_KERNELS,
    WeightOnlyConfig,
)

GROUP = 128
UNQUANTIZED = (
    "bf16 matmul",
    "fp32 matmul",
    "vLLM oneDNN bf16 (unquantized)",
    "vLLM oneDNN fp32 (unquantized)",
)


def build_layers(n: int, k: int) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Scheme forwards over random weights: name → f(x bf16 [M, K])."""
    torch.manual_seed(0)
    w8 = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    w4 = torch.randint(-8, 8, (n, k), dtype=torch.int8)
    scale = torch.rand(n) * 1e-2 + 1e-3
    group_scale = torch.rand(n, k // GROUP) * 1e-2 + 1e-3
    w_bf16 = torch.randn(n, k, dtype=torch.bfloat16)
    w_fp32 = w_bf16.float()
    dynamic = make_scaled_int8_mm(w8, scale)
    static = make_scaled_int8_mm(w8, scale, torch.zeros(n, dtype=torch.int32))
    w4a8 = make_scaled_int8_mm(w4, scale)
    w4a8_group = make_scaled_int8_mm(w4, group_scale)
    left, right = torch.randn(64, 64), torch.randn(k // 64, k // 64)

    def int8_act(kernel):
        return lambda x: kernel(*quantize_dynamic_per_token(x), None, torch.bfloat16)

    layers = {
        "bf16 matmul": lambda x: x @ w_bf16.T,
        "fp32 matmul": lambda x: x.float() @ w_fp32.T,
        "W8A8_DYNAMIC": int8_act(dynamic),
        "W8A8 static": lambda x: static(quantize_static_per_tensor(x, 0.05, 3), None, None, torch.bfloat16),
        "W4A8_DYNAMIC per-channel": int8_act(w4a8),
        f"W4A8_DYNAMIC g{GROUP}": int8_act(w4a8_group),
        "W4A4_DYNAMIC": lambda x: w4a8(*quantize_dynamic_per_token(x, bits=4), None, torch.bfloat16),
        "W4A4_FLATQUANT": lambda x: w4a8(
            *quantize_dynamic_per_token(kronecker_transform(x, left, right), bits=4, clip_ratio=0.98),
            None,
            torch.bfloat16,
        ),
    }
    for kernel in WEIGHT_ONLY_INT8_KERNELS:
        config = WeightOnlyConfig(k, n, k, torch.bfloat16, bits=8)
        if kernel.name != "reference" and kernel.is_supported("cpu")[0] and kernel.can_implement(config)[0]:
            layer = make_weight_only_int8(w8, scale, None, torch.bfloat16, kernel=kernel)
            layers[f"W8A16 ({kernel.name})"] = lambda x, layer=layer: layer(x, None)
    for kernel in WEIGHT_ONLY_INT4_KERNELS:
        config = WeightOnlyConfig(k, n, GROUP, torch.bfloat16, bits=4)
        if kernel.name != "reference" and kernel.is_supported("cpu")[0] and kernel.can_implement(config)[0]:
            layer = make_weight_only_int4(w4, group_scale, None, torch.bfloat16, kernel=kernel)
            layers[f"W4A16 g{GROUP} ({kernel.name})"] = lambda x, layer=layer: layer(x, None)
    layers.update(vllm_cpu_layers(w_bf16, w8, scale))
    return layers


def vllm_cpu_layers(w_bf16: torch.Tensor, w8: torch.Tensor, scale: torch.Tensor) -> dict[str, Callable]:
    """vLLM-CPU's own prepacked oneDNN GEMMs, when vLLM is installed: what its unquantized
    bf16/fp32 models and its compressed-tensors W8A8 int8 path run on this CPU."""
    try:
        from vllm import _custom_ops as ops
    except ImportError:
        return {}
    if not getattr(ops, "_supports_onednn", False):
        return {}
    bf16 = ops.create_onednn_mm(w_bf16.t(), 32)
    fp32 = ops.create_onednn_mm(w_bf16.float().t(), 32)
    w8a8 = ops.create_onednn_scaled_mm(w8.t(), scale.view(-1, 1), torch.bfloat16, True, False, 32)

    def w8a8_forward(x: torch.Tensor) -> torch.Tensor:
        x_q, x_s, _ = ops.onednn_scaled_int8_quant(x, None, None, True)
        out = torch.empty(x.shape[0], w8.shape[0], dtype=x.dtype)
        return ops.onednn_scaled_mm(w8a8, x_q, out, x_s, None, None, None)

    return {
        "vLLM oneDNN bf16 (unquantized)": lambda x: ops.onednn_mm(bf16, x, None),
        "vLLM oneDNN fp32 (unquantized)": lambda x: ops.onednn_mm(fp32, x.float(), None),
        "vLLM oneDNN W8A8 dynamic (CT)": w8a8_forward,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, default=4096)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--m", type=int, nargs="+", default=[1, 8, 256])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    isa = torch.backends.cpu.get_cpu_capability()
    int8_flags = ", ".join(sorted(f for f in cpu_flags() if "vnni" in f or "amx" in f)) or "none"
    print(
        f"K={args.k} N={args.n} threads={args.threads} torch={torch.__version__} cpu capability={isa} "
        f"int8 dot product={cpu_has_int8_dot()} ({int8_flags})"
    )
    layers = build_layers(args.n, args.k)
    header = f"{'M':>4} {'forward':<36} {'ms':>9} {'x bf16':>8} {'x best':>8}"
    print(header)
    print("-" * len(header))
    for m in args.m:
        x = torch.randn(m, args.k, dtype=torch.bfloat16)
        times = {name: median_ms(lambda layer=layer, x=x: layer(x)) for name, layer in layers.items()}
        best = min(ms for name, ms in times.items() if name in UNQUANTIZED)
        for name, ms in times.items():
            print(f"{m:>4} {name:<36} {ms:>9.3f} {times['bf16 matmul'] / ms:>8.2f} {best / ms:>8.2f}")
    print("x bf16: speed-up over torch's bf16 matmul; x best: over the fastest unquantized GEMM (*)")


if __name__ == "__main__":
    main()
