"""GPU benchmark of the CUDA kernels: error vs the float64 references, CUDA-graph speed vs cuBLAS.

    python benchmarks/gpu_kernels.py [--m 1 16 128 1024 4096] [--shapes 4096x4096 ...]
                                     [--dtype bfloat16] [--library PATH] [--json OUT]

For each registered case (a scheme's forward as the plugin runs it: activation
quantization and GEMM from the same factories the schemes call), each K×N and
each M, it prints the relative error (Frobenius norm) against the scheme's
float64 reference, and the time of one CUDA-graph replay of: the plugin's
forward, cuBLAS in the activation dtype (``F.linear`` on the dequantized
weight) and, where a case has one, the raw vLLM op sequence for the same math
(preallocated buffers, no Python around it). Ratios > 1 are faster than cuBLAS.

Needs a CUDA GPU and vLLM's compiled ops: an installed CUDA build of vLLM, or
``--library`` / ``VLLM_MODELSLIM_VLLM_C_LIBRARY`` naming vLLM's
``_C_stable_libtorch.abi3.so`` (e.g. vLLM 0.26.0's for torch 2.11 + CUDA 13,
``/work/shared/gpu/fetch_vllm_cuda_ops.sh``). Exits with a message on a
machine without CUDA.

Adding rows: write ``build(k, n, dtype, generator) -> Built`` for a scheme and
append ``Case(label, build)`` to :data:`CASES` (weight-only and MoE cases too).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_SHAPES = ("4096x4096", "4096x14336", "14336x4096", "8192x8192")
DEFAULT_M = (1, 16, 128, 1024, 4096)


@dataclass
class Built:
    """One case at one K×N, on the GPU.

    Attributes:
        forward: ``x [M, K] -> y [M, N]``, the plugin's path (what is timed and checked).
        reference: ``x [M, K] -> y [M, N]`` float64, the scheme's reference.
        dense_weight: ``[N, K]`` in the activation dtype, for the cuBLAS baseline (None with ``baseline``).
        raw: ``x -> y`` through vLLM's raw ops for the same math, or None.
        kernels: the chosen kernels' names (for the table).
        baseline: ``x -> y`` timed instead of ``F.linear(x, dense_weight)`` (e.g. bf16 experts), or None.
    """

    forward: Callable[[torch.Tensor], torch.Tensor]
    reference: Callable[[torch.Tensor], torch.Tensor]
    dense_weight: torch.Tensor | None
    raw: Callable[[torch.Tensor], torch.Tensor] | None
    kernels: str
    baseline: Callable[[torch.Tensor], torch.Tensor] | None = None


@dataclass(frozen=True)
class Case:
    """A benchmark row: a label and ``build(k, n, dtype, generator) -> Built``."""

    label: str
    build: Callable[[int, int, torch.dtype, torch.Generator], Built]


# ---------------------------------------------------------------- cases


def _int_weight(n: int, k: int, qmax: int, g: torch.Generator):
    w = torch.randn(n, k, generator=g, device="cuda") * 0.02
    s_w = (w.abs().amax(1) / qmax).float()
    w_q = torch.round(w / s_w[:, None]).clamp(-qmax - 1, qmax).to(torch.int8)
    return w_q, s_w


def _raw_ops():
    """vLLM's int8 ops, or None where they cannot run (the raw-op column stays empty)."""
    from vllm_modelslim.kernels.vllm_cuda.int8_ops import VllmInt8Ops, int8_ops_unavailable_reason

    return VllmInt8Ops.from_vllm() if int8_ops_unavailable_reason() is None else None


def _dynamic(bits_w: int, bits_a: int):
    def build(k, n, dtype, g):
        from vllm_modelslim.kernels import (
            make_scaled_int8_mm,
            quantize_dynamic_per_token_reference,
            scaled_int8_mm_reference,
        )
        from vllm_modelslim.kernels.activation_quantizers import make_activation_quant
        from vllm_modelslim.schemes.linear.dynamic_forward import apply_dynamic

        w_q, s_w = _int_weight(n, k, 2 ** (bits_w - 1) - 1, g)
        mm = make_scaled_int8_mm(w_q, s_w, out_dtype=dtype)
        quant = make_activation_quant("cuda", bits=bits_a)

        def reference(x):
            x_q, s = quantize_dynamic_per_token_reference(x, bits=bits_a)
            return scaled_int8_mm_reference(x_q, s, w_q, s_w)

        raw, ops = None, _raw_ops()
        if bits_a == 8 and ops is not None:
            b = w_q.t()

            def raw(x, _buffers={}):  # noqa: B006  (buffers per M, made once outside the graph)
                if x.shape[0] not in _buffers:
                    m = x.shape[0]
                    _buffers[m] = (
                        torch.empty(m, k, dtype=torch.int8, device="cuda"),
                        torch.empty(m, 1, dtype=torch.float32, device="cuda"),
                        torch.empty(m, n, dtype=dtype, device="cuda"),
                    )
                q, s, out = _buffers[x.shape[0]]
                ops.dynamic_scaled_int8_quant(q, x, s, None)
                ops.cutlass_scaled_mm(out, q, b, s, s_w, None)
                return out

        return Built(
            forward=lambda x: apply_dynamic(mm, x, None, bits=bits_a, quantizer=quant),
            reference=reference,
            dense_weight=(w_q.float() * s_w[:, None]).to(dtype),
            raw=raw,
            kernels=f"{quant.name} + {mm.name}",
        )

    return build


def _static(k, n, dtype, g):
    from vllm_modelslim.kernels import (
        make_scaled_int8_mm,
        quantize_static_per_tensor_reference,
        scaled_int8_mm_reference,
    )
    from vllm_modelslim.kernels.activation_quantizers import make_activation_quant

    s_in, o_in = 0.02, 3.0
    w_q, s_w = _int_weight(n, k, 127, g)
    bias = torch.randn(n, generator=g, device="cuda") * 0.1
    deq = (s_in * s_w).float()
    quant_bias = (torch.round(bias.double() / deq.double()) - o_in * w_q.double().sum(1)).to(torch.int32)
    mm = make_scaled_int8_mm(w_q, deq, quant_bias, out_dtype=dtype)
    quant = make_activation_quant(
        "cuda", scale=torch.tensor([s_in], device="cuda"), offset=torch.tensor([o_in], device="cuda")
    )

    def reference(x):
        x_q = quantize_static_per_tensor_reference(x, s_in, o_in)
        return scaled_int8_mm_reference(x_q, None, w_q, deq, quant_bias)

    ops = _raw_ops()
    b, one = w_q.t(), torch.ones(1, device="cuda")
    scale_t = torch.tensor([s_in], device="cuda")
    azp_t = torch.tensor([int(o_in)], dtype=torch.int32, device="cuda")
    neg_qb = (-quant_bias).contiguous()

    def raw(x, _buffers={}):  # noqa: B006
        if x.shape[0] not in _buffers:
            m = x.shape[0]
            _buffers[m] = (
                torch.empty(m, k, dtype=torch.int8, device="cuda"),
                torch.empty(m, n, dtype=dtype, device="cuda"),
            )
        q, out = _buffers[x.shape[0]]
        ops.static_scaled_int8_quant(q, x, scale_t, azp_t)
        ops.cutlass_scaled_mm_azp(out, q, b, one, deq, neg_qb, None, None)
        return out

    return Built(
        forward=lambda x: mm(quant(x)[0], None, None, dtype),
        reference=reference,
        dense_weight=(w_q.float() * s_w[:, None]).to(dtype),
        raw=raw if ops is not None else None,
        kernels=f"{quant.name} + {mm.name}",
    )


def _weight_only(bits: int, group: int | None, zero_points: bool):
    """W8A16 / W4A16 through ``make_weight_only`` (Machete on sm90, Marlin elsewhere)."""

    def build(k, n, dtype, g):
        from vllm_modelslim.kernels.weight_only import make_weight_only, weight_only_reference

        groups = k // (group or k)
        qmax = 2 ** (bits - 1) - 1
        w = torch.randn(n, k, generator=g, device="cuda") * 0.02 + (0.01 if zero_points else 0.0)
        wg = w.view(n, groups, -1)
        if zero_points:  # asymmetric min/max per group, integer zero points
            lo, hi = wg.amin(-1), wg.amax(-1)
            s = ((hi - lo) / (2 * qmax + 1)).float()
            z = (-qmax - 1 - torch.round(lo / s)).clamp(-qmax - 1, qmax)
        else:
            s = (wg.abs().amax(-1) / qmax).float()
            z = None
        shift = 0 if z is None else z.unsqueeze(-1)
        q = (torch.round(wg / s.unsqueeze(-1)) + shift).clamp(-qmax - 1, qmax).to(torch.int8).view(n, k)
        layer = make_weight_only(q, s, z, dtype, bits=bits)

        def reference(x):
            return weight_only_reference(x, q, s, z, out_dtype=torch.float64)

        return Built(
            forward=lambda x: layer(x, None),
            reference=reference,
            dense_weight=layer_dense(q, s, z, dtype),
            raw=None,
            kernels=layer.name,
        )

    return build


def layer_dense(q, s, z, dtype):
    from vllm_modelslim.kernels.weight_only import dequantize_weight

    return dequantize_weight(q, s, z, torch.float32).to(dtype)


def _w4a8_per_group(k, n, dtype, g, group=128):
    """W4A8_DYNAMIC per-group (``s·s2[g]``): the activation quantizer + ``make_scaled_int8_mm``."""
    from vllm_modelslim.kernels import (
        make_scaled_int8_mm,
        quantize_dynamic_per_token_reference,
        scaled_int8_mm_reference,
    )
    from vllm_modelslim.kernels.activation_quantizers import make_activation_quant
    from vllm_modelslim.schemes.linear.dynamic_forward import apply_dynamic

    w = (torch.randn(n, k, generator=g, device="cuda") * 0.02).view(n, k // group, group)
    s = (w.abs().amax(-1) / 7).float()
    q = torch.round(w / s.unsqueeze(-1)).clamp(-8, 7).to(torch.int8).view(n, k)
    mm = make_scaled_int8_mm(q, s, out_dtype=dtype)
    quant = make_activation_quant("cuda", bits=8)

    def reference(x):
        x_q, x_scale = quantize_dynamic_per_token_reference(x)
        return scaled_int8_mm_reference(x_q, x_scale, q, s)

    return Built(
        forward=lambda x: apply_dynamic(mm, x, None, quantizer=quant),
        reference=reference,
        dense_weight=layer_dense(q, s, None, dtype),
        raw=None,
        kernels=f"{quant.name} + {mm.name}",
    )


def _experts(k, n, dtype, g, num_experts=8, top_k=2, group=128):
    """Routed W4A16 g128 experts (hidden K, intermediate N/2): grouped forward, dense path when captured.

    The baseline runs the same dispatch over bf16 experts (``F.linear``); the
    reference is every expert in float64 on every row, combined with the
    routing weights in float64; routing is random, fixed per M.
    """
    from vllm_modelslim.kernels.grouped_experts import grouped_experts_forward, swiglu
    from vllm_modelslim.kernels.weight_only import dequantize_weight, make_weight_only

    inter = n // 2

    def quantized(rows, cols):
        w = (torch.randn(rows, cols, generator=g, device="cuda") * 0.02).view(rows, cols // group, group)
        s = (w.abs().amax(-1) / 7).float()
        return torch.round(w / s.unsqueeze(-1)).clamp(-8, 7).to(torch.int8).view(rows, cols), s

    fast, exact, dense = [], [], []
    for _ in range(num_experts):
        (q13, s13), (q2, s2) = quantized(2 * inter, k), quantized(k, inter)
        w13, w2 = (
            make_weight_only(q13, s13, None, dtype, bits=4),
            make_weight_only(q2, s2, None, dtype, bits=4),
        )
        fast.append(lambda x, w13=w13, w2=w2: w2(swiglu(w13(x, None), x.dtype), None))
        exact.append((dequantize_weight(q13, s13, None), dequantize_weight(q2, s2, None)))
        d13, d2 = (w.to(dtype) for w in exact[-1])
        dense.append(lambda x, d13=d13, d2=d2: F.linear(swiglu(F.linear(x, d13), x.dtype), d2))
    routing = {}

    def route(m):
        if m not in routing:
            r = torch.Generator(device="cuda").manual_seed(m)
            ids = torch.rand(m, num_experts, generator=r, device="cuda").argsort(dim=1)[:, :top_k]
            routing[m] = (torch.rand(m, top_k, generator=r, device="cuda"), ids)
        return routing[m]

    def reference(x):
        weights, ids = route(x.shape[0])
        out = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
        for e, (w13, w2) in enumerate(exact):
            gate, up = (x.double() @ w13.T).chunk(2, dim=-1)
            y = (F.silu(gate) * up) @ w2.T
            out += (weights.double() * (ids == e)).sum(dim=1, keepdim=True) * y
        return out

    return Built(
        forward=lambda x: grouped_experts_forward(x, *route(x.shape[0]), fast),
        reference=reference,
        dense_weight=None,
        raw=None,
        kernels=f"experts ({w13.name})",
        baseline=lambda x: grouped_experts_forward(x, *route(x.shape[0]), dense),
    )


CASES: list[Case] = [
    Case("W8A8_DYNAMIC", _dynamic(8, 8)),
    Case("W8A8 static (asym)", _static),
    Case("W4A8_DYNAMIC per-channel", _dynamic(4, 8)),
    Case("W4A4_DYNAMIC", _dynamic(4, 4)),
    Case("W8A16 per-channel", _weight_only(8, None, False)),
    Case("W8A16 per-channel asym", _weight_only(8, None, True)),
    Case("W4A16 g128 asym", _weight_only(4, 128, True)),
    Case("W4A16 per-channel", _weight_only(4, None, False)),
    Case("W4A8_DYNAMIC g128", _w4a8_per_group),
    Case("MoE W4A16 g128 E8 top2", _experts),
]
"""The rows of the table, in order. Part of the benchmark's interface: append cases here."""


# ---------------------------------------------------------------- timing


def graph_ms(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, replays: int = 50) -> float:
    """Mean milliseconds of one CUDA-graph replay of ``fn(x)`` (nan when capture fails, reason printed)."""
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                fn(x)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn(x)
        for _ in range(10):
            graph.replay()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        stop.record()
        torch.cuda.synchronize()
        return start.elapsed_time(stop) / replays
    except Exception as exc:  # noqa: BLE001  (a row that cannot be captured is reported, not fatal)
        print(f"  graph capture failed: {type(exc).__name__}: {str(exc)[:200]}", file=sys.stderr)
        torch.cuda.synchronize()
        return math.nan


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).norm() / want.double().norm())


def run(cases: list[Case], shapes: list[tuple[int, int]], ms: list[int], dtype: torch.dtype) -> list[dict]:
    """Measure every case × shape × M; print the table as it goes; return the rows."""
    rows = []
    header = (
        f"{'case':26} {'K×N':>11} {'M':>5} {'kernels':34} {'rel.err':>8} {'ms':>8} "
        f"{'×cuBLAS':>7} {'×raw op':>7}"
    )
    print(header)
    for case in cases:
        for k, n in shapes:
            g = torch.Generator(device="cuda").manual_seed(0)
            built = case.build(k, n, dtype, g)
            for m in ms:
                x = torch.randn(m, k, generator=g, device="cuda").to(dtype)
                err = relative_error(built.forward(x), built.reference(x))
                t = graph_ms(built.forward, x)
                t_dense = graph_ms(built.baseline or (lambda x, w=built.dense_weight: F.linear(x, w)), x)
                t_raw = graph_ms(built.raw, x) if built.raw is not None else math.nan
                row = dict(
                    case=case.label,
                    k=k,
                    n=n,
                    m=m,
                    kernels=built.kernels,
                    rel_err=err,
                    ms=t,
                    cublas_ms=t_dense,
                    raw_ms=t_raw,
                )
                rows.append(row)
                print(
                    f"{case.label:26} {f'{k}x{n}':>11} {m:>5} {built.kernels:34} {err:8.1e} {t:8.4f} "
                    f"{t_dense / t:7.2f} {t_raw / t:7.2f}",
                    flush=True,
                )
            del built
            torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--m", type=int, nargs="+", default=list(DEFAULT_M))
    parser.add_argument("--shapes", nargs="+", default=list(DEFAULT_SHAPES), help="KxN")
    parser.add_argument("--dtype", choices=("bfloat16", "float16"), default="bfloat16")
    parser.add_argument("--cases", nargs="+", help="case labels to run (default: all)")
    parser.add_argument("--library", help="vLLM op library to load (sets VLLM_MODELSLIM_VLLM_C_LIBRARY)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_kernels.py needs CUDA: no CUDA device is visible to torch here.", file=sys.stderr)
        return 2
    if args.library:
        os.environ["VLLM_MODELSLIM_VLLM_C_LIBRARY"] = args.library
    from vllm_modelslim.kernels.vllm_cuda.int8_ops import int8_ops_unavailable_reason

    reason = int8_ops_unavailable_reason()
    if reason is not None:
        print(
            f"vLLM's int8 CUDA ops are not available ({reason}); the rows fall back to torch kernels "
            "and have no raw-op column",
            file=sys.stderr,
        )
    cases = [c for c in CASES if not args.cases or c.label in args.cases]
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes]
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {args.dtype} activations")
    rows = run(cases, shapes, args.m, getattr(torch, args.dtype))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
