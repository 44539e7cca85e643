"""Grouped expert computation of a routed mixture of experts: dispatch, per-expert forward, combine.

Routing (``topk_ids``/``topk_weights``) is done by vLLM before the quant
method runs. What is left is the generic part of every fused-MoE forward
(vLLM Ascend's dispatch → grouped MLP → combine, spec §4.11)::

    out[t] = Σ_j topk_weights[t, j] · expert_{topk_ids[t, j]}(x[t])

The experts themselves are callables ``[rows, H] -> [rows, H]`` (quantized
SwiGLU MLPs built by a MoE scheme); the kernels here only decide which rows
each expert sees. :func:`grouped_experts_forward` sorts the routed rows by
expert and calls each active expert once on all its rows (one GEMM per
projection per active expert); :func:`grouped_experts_reference` calls the
expert once per (token, slot) and sums in float64, the oracle it is tested
against. Row-wise expert math (per-token activation quantization included)
makes the two agree up to the float64-vs-float32 combine.

While a CUDA graph is being captured (vLLM captures decode batches),
:func:`grouped_experts_forward` takes :func:`grouped_experts_dense` instead:
the grouping needs the per-expert row counts on the host (a device→host copy,
not allowed in a capture), so each local expert runs on every row and the
rows not routed to it are masked out of the sum. That is correct and
capturable but reads every local expert's weights at each step (``E / k``
times the weight traffic of the grouped path at one token); vLLM's fused
Marlin MoE ops would avoid it and are not wired yet. Not run on a GPU yet.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

ExpertForward = Callable[[torch.Tensor], torch.Tensor]
"""One expert: ``[rows, H]`` in the activation dtype → ``[rows, H]``."""


def _local_ids(topk_ids: torch.Tensor, expert_map: torch.Tensor | None) -> torch.Tensor:
    ids = topk_ids.to(torch.long)
    return ids if expert_map is None else expert_map.to(torch.long)[ids]


def _weighted_call(
    expert: ExpertForward, rows: torch.Tensor, weights: torch.Tensor, on_input: bool
) -> torch.Tensor:
    """``w·expert(x)`` in ``weights.dtype``, or ``expert(w·x)`` (input rounded back to ``rows.dtype``)."""
    if on_input:
        return expert((rows.to(weights.dtype) * weights).to(rows.dtype)).to(weights.dtype)
    return expert(rows).to(weights.dtype) * weights


def grouped_experts_forward(
    x: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    experts: Sequence[ExpertForward],
    expert_map: torch.Tensor | None = None,
    apply_router_weight_on_input: bool = False,
) -> torch.Tensor:
    """Weighted sum of the selected experts' outputs, one call per active expert.

    Args:
        x: ``[T, H]`` activations (bf16/fp16/fp32).
        topk_weights: ``[T, k]`` routing weights (any float dtype; used in float32).
        topk_ids: ``[T, k]`` expert ids (int32/int64), global when ``expert_map`` is given.
        experts: one forward per local expert.
        expert_map: ``[E_global]`` global → local id, −1 for experts of other
            ranks (expert parallelism); None when every expert is local.
        apply_router_weight_on_input: scale the expert's input instead of its
            output by the routing weight (vLLM's option for top-1 routing).

    Returns:
        ``[T, H]`` in ``x.dtype`` (accumulated in float32).
    """
    if x.is_cuda and torch.cuda.is_current_stream_capturing():
        return grouped_experts_dense(
            x, topk_weights, topk_ids, experts, expert_map, apply_router_weight_on_input
        )
    tokens, k = topk_ids.shape
    ids = _local_ids(topk_ids, expert_map).reshape(-1)
    weights = topk_weights.to(torch.float32).reshape(-1)
    rows = torch.arange(tokens, device=x.device).repeat_interleave(k)
    keep = ids >= 0
    if not bool(keep.all()):
        ids, weights, rows = ids[keep], weights[keep], rows[keep]
    order = torch.argsort(ids, stable=True)
    ids, weights, rows = ids[order], weights[order], rows[order]
    counts = torch.bincount(ids, minlength=len(experts)).tolist()
    out = torch.zeros(tokens, x.shape[-1], dtype=torch.float32, device=x.device)
    start = 0
    for expert, count in enumerate(counts):
        if count == 0:
            continue
        stop = start + count
        token_rows, row_weights = rows[start:stop], weights[start:stop, None]
        y = _weighted_call(experts[expert], x[token_rows], row_weights, apply_router_weight_on_input)
        out.index_add_(0, token_rows, y.to(torch.float32))
        start = stop
    return out.to(x.dtype)


def grouped_experts_dense(
    x: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    experts: Sequence[ExpertForward],
    expert_map: torch.Tensor | None = None,
    apply_router_weight_on_input: bool = False,
) -> torch.Tensor:
    """:func:`grouped_experts_forward` without host synchronisation (CUDA-graph capturable).

    Every local expert runs on all ``T`` rows; each row's output is weighted
    by the routing weight of that expert (zero where it is not routed) and
    masked out where it is not routed (so a non-finite output of an unrouted
    row cannot reach the sum). Arguments and result as :func:`grouped_experts_forward`.
    """
    ids = _local_ids(topk_ids, expert_map)
    weights = topk_weights.to(torch.float32)
    out = torch.zeros(x.shape[0], x.shape[-1], dtype=torch.float32, device=x.device)
    for expert_id, expert in enumerate(experts):
        chosen = ids == expert_id  # [T, k]
        row_weights = (weights * chosen).sum(dim=1, keepdim=True)
        y = _weighted_call(expert, x, row_weights, apply_router_weight_on_input).to(torch.float32)
        out += torch.where(chosen.any(dim=1, keepdim=True), y, 0.0)
    return out.to(x.dtype)


def grouped_experts_reference(
    x: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    experts: Sequence[ExpertForward],
    expert_map: torch.Tensor | None = None,
    apply_router_weight_on_input: bool = False,
) -> torch.Tensor:
    """Oracle of :func:`grouped_experts_forward`: one expert call per (token, slot), float64 sum."""
    ids = _local_ids(topk_ids, expert_map)
    out = torch.zeros(x.shape, dtype=torch.float64)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            expert = int(ids[t, j])
            if expert < 0:
                continue
            weight = topk_weights[t, j].to(torch.float64).reshape(1, 1)
            out[t] += _weighted_call(experts[expert], x[t : t + 1], weight, apply_router_weight_on_input)[0]
    return out.to(x.dtype)


def swiglu(gate_up: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``silu(gate) · up`` of ``gate_up`` ``[rows, 2I]`` (gate first), in float32, returned in ``dtype``."""
    gate, up = gate_up.to(torch.float32).chunk(2, dim=-1)
    return (torch.nn.functional.silu(gate) * up).to(dtype)
