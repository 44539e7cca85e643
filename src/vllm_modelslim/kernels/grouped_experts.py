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

:func:`grouped_experts_two_stage` runs the same dispatch in two stages with a
layer-wide step between them: every active expert's first stage (gate/up and
SwiGLU), then one ``exchange`` call over all routed rows at once (a fixed
``T·k`` slots, so a collective in it pairs up across tensor-parallel ranks
whatever each rank routed), then every expert's second stage with its rows'
share of the exchange's result. Tensor-parallel MoE layers use it so that the
down projection's per-token scales span every rank's slice of the row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch

ExpertForward = Callable[[torch.Tensor], torch.Tensor]
"""One expert: ``[rows, H]`` in the activation dtype → ``[rows, H]``."""


class TwoStageExpert(Protocol):
    """An expert split at its hidden activations: ``second(first(x), row_data)`` is its output."""

    def first(self, x: torch.Tensor) -> torch.Tensor:
        """``[rows, H]`` → hidden ``[rows, I]`` (activation dtype)."""
        ...

    def second(self, hidden: torch.Tensor, row_data: torch.Tensor) -> torch.Tensor:
        """Hidden ``[rows, I]`` and the exchange's ``[rows]`` values for these rows → ``[rows, H]``."""
        ...


RowExchange = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
"""``(hidden [R, I], slots int64 [R], num_slots) -> row_data [R]``: the layer-wide step between the
stages; ``slots`` are distinct in ``[0, num_slots)``, identical for the same routing on every rank."""


def _local_ids(topk_ids: torch.Tensor, expert_map: torch.Tensor | None) -> torch.Tensor:
    ids = topk_ids.to(torch.long)
    return ids if expert_map is None else expert_map.to(torch.long)[ids]


def _weight_input(rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``w·x`` computed in ``weights.dtype``, rounded back to ``rows.dtype`` (router weight on the input)."""
    return (rows.to(weights.dtype) * weights).to(rows.dtype)


def _weight_output(y: torch.Tensor, weights: torch.Tensor, on_input: bool) -> torch.Tensor:
    """The expert output ``y`` in ``weights.dtype``, times ``w`` unless the input carried it."""
    y = y.to(weights.dtype)
    return y if on_input else y * weights


def _weighted_call(
    expert: ExpertForward, rows: torch.Tensor, weights: torch.Tensor, on_input: bool
) -> torch.Tensor:
    """``w·expert(x)`` in ``weights.dtype``, or ``expert(w·x)`` (input rounded back to ``rows.dtype``)."""
    return _weight_output(expert(_weight_input(rows, weights) if on_input else rows), weights, on_input)


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
    routed = _route(topk_weights, topk_ids, len(experts), expert_map)
    out = torch.zeros(x.shape[0], x.shape[-1], dtype=torch.float32, device=x.device)
    for expert, start, stop in routed.groups():
        token_rows, row_weights = routed.rows[start:stop], routed.weights[start:stop, None]
        y = _weighted_call(experts[expert], x[token_rows], row_weights, apply_router_weight_on_input)
        out.index_add_(0, token_rows, y.to(torch.float32))
    return out.to(x.dtype)


class _Routing:
    """The routed (token, slot) pairs kept on this rank, sorted by local expert id (stable).

    ``rows``/``slots``/``weights`` ``[R]``: token row, flat slot ``t·k + j``, float32 routing weight.
    """

    def __init__(self, rows, slots, weights, counts: list[int]):
        self.rows, self.slots, self.weights, self.counts = rows, slots, weights, counts

    def groups(self):
        """``(local expert, start, stop)`` of each active expert's rows."""
        start = 0
        for expert, count in enumerate(self.counts):
            if count:
                yield expert, start, start + count
                start += count


def _route(
    topk_weights: torch.Tensor, topk_ids: torch.Tensor, num_local: int, expert_map: torch.Tensor | None
) -> _Routing:
    tokens, k = topk_ids.shape
    ids = _local_ids(topk_ids, expert_map).reshape(-1)
    weights = topk_weights.to(torch.float32).reshape(-1)
    slots = torch.arange(tokens * k, device=topk_ids.device)
    keep = ids >= 0
    if not bool(keep.all()):
        ids, weights, slots = ids[keep], weights[keep], slots[keep]
    order = torch.argsort(ids, stable=True)
    ids, weights, slots = ids[order], weights[order], slots[order]
    counts = torch.bincount(ids, minlength=num_local).tolist()
    return _Routing(torch.div(slots, k, rounding_mode="floor"), slots, weights, counts)


def grouped_experts_two_stage(
    x: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    experts: Sequence[TwoStageExpert],
    exchange: RowExchange,
    expert_map: torch.Tensor | None = None,
    apply_router_weight_on_input: bool = False,
) -> torch.Tensor:
    """:func:`grouped_experts_forward` with one layer-wide ``exchange`` between the experts' two stages.

    Every active expert's ``first`` stage runs on its rows (weighted input when
    ``apply_router_weight_on_input``), then ``exchange(hidden, slots, T·k)`` is
    called once on all routed rows (``hidden`` ``[R, I]`` sorted by expert,
    ``slots`` their flat ``t·k + j`` positions), then each expert's ``second``
    stage gets its hidden rows and their share of the exchange's ``[R]`` result.
    While a CUDA graph is captured every local expert runs on all ``T`` rows
    (as :func:`grouped_experts_dense`) and the slots are ``e·T + t`` of ``E·T``.

    Args and result: as :func:`grouped_experts_forward`, plus ``exchange``.
    """
    if x.is_cuda and torch.cuda.is_current_stream_capturing():
        return _two_stage_dense(
            x, topk_weights, topk_ids, experts, exchange, expert_map, apply_router_weight_on_input
        )
    tokens, k = topk_ids.shape
    routed = _route(topk_weights, topk_ids, len(experts), expert_map)
    on_input = apply_router_weight_on_input
    hidden = []
    for expert, start, stop in routed.groups():
        rows = x[routed.rows[start:stop]]
        hidden.append(
            experts[expert].first(_weight_input(rows, routed.weights[start:stop, None]) if on_input else rows)
        )
    # With no routed row here the exchange still runs (a collective pairs up across ranks).
    row_data = exchange(torch.cat(hidden) if hidden else x.new_zeros(0, 1), routed.slots, tokens * k)
    out = torch.zeros(tokens, x.shape[-1], dtype=torch.float32, device=x.device)
    for (expert, start, stop), expert_hidden in zip(routed.groups(), hidden, strict=True):
        y = experts[expert].second(expert_hidden, row_data[start:stop])
        out.index_add_(
            0, routed.rows[start:stop], _weight_output(y, routed.weights[start:stop, None], on_input)
        )
    return out.to(x.dtype)


def _two_stage_dense(x, topk_weights, topk_ids, experts, exchange, expert_map, apply_router_weight_on_input):
    """Capturable :func:`grouped_experts_two_stage`: every local expert on every row, unrouted rows masked."""
    ids = _local_ids(topk_ids, expert_map)
    weights = topk_weights.to(torch.float32)
    tokens = x.shape[0]
    hidden, row_weights, chosen = [], [], []
    for expert_id, expert in enumerate(experts):
        picked = ids == expert_id  # [T, k]
        w = (weights * picked).sum(dim=1, keepdim=True)
        hidden.append(expert.first(_weight_input(x, w) if apply_router_weight_on_input else x))
        row_weights.append(w)
        chosen.append(picked.any(dim=1, keepdim=True))
    slots = torch.arange(len(experts) * tokens, device=x.device)
    row_data = exchange(torch.cat(hidden), slots, len(experts) * tokens)
    out = torch.zeros(tokens, x.shape[-1], dtype=torch.float32, device=x.device)
    for expert_id, expert in enumerate(experts):
        share = row_data[expert_id * tokens : (expert_id + 1) * tokens]
        y = _weight_output(
            expert.second(hidden[expert_id], share), row_weights[expert_id], apply_router_weight_on_input
        )
        out += torch.where(chosen[expert_id], y, 0.0)
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
