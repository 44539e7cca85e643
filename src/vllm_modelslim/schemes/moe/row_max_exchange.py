"""Full-row dynamic scales of the experts' down projection under tensor parallelism, one collective per layer.

Under pure tensor parallelism every rank holds a slice of each expert's
intermediate size, so the down projection (w2) sees one K-slice of each routed
row per rank. ModelSlim's dynamic per-token scale is over the full row (spec
§4.2), so the ranks' row maxima must be combined before w2 quantizes. Doing
that inside each expert's quantizer would issue one collective per active
expert, which only pairs up across ranks if every rank routes exactly the
same rows to the same experts; instead the MoE forward runs in two stages
(:func:`~vllm_modelslim.kernels.grouped_experts.grouped_experts_two_stage`):
all experts' gate/up + SwiGLU, then :func:`row_max_exchange` once over all
``T·k`` routed slots (a fixed-size message), then each expert's w2, whose
quantizer takes its rows' combined maxima from a :class:`PrecomputedRowMax`.
"""

from __future__ import annotations

import torch

from vllm_modelslim.kernels.activation_quant import RowMaxReduce
from vllm_modelslim.kernels.grouped_experts import RowExchange


class PrecomputedRowMax:
    """A :data:`RowMaxReduce` that hands out maxima combined beforehand, once.

    ``pending`` is set to the full-row maxima ``[rows]`` float32 of the next
    call's rows; the call checks the shape, returns them and clears ``pending``.

    Raises:
        RuntimeError: called with nothing pending, or for a different number of rows.
    """

    def __init__(self) -> None:
        self.pending: torch.Tensor | None = None

    def __call__(self, local_max: torch.Tensor) -> torch.Tensor:
        full, self.pending = self.pending, None
        if full is None or full.shape != local_max.shape:
            got = None if full is None else tuple(full.shape)
            raise RuntimeError(
                f"expert down projection: full-row maxima of {tuple(local_max.shape)} expected, got {got}"
            )
        return full


def row_max_exchange(reduce: RowMaxReduce) -> RowExchange:
    """The two-stage MoE forward's exchange: every routed row's ``max |hidden|`` combined across ranks.

    Args:
        reduce: the tensor-parallel combine of row maxima (float32 ``[S]`` → ``[S]``, a collective).

    Returns:
        ``exchange(hidden [R, I], slots [R], num_slots) -> [R]`` float32: each row's
        local maximum is placed at its slot of a zero ``[num_slots]`` vector, the
        vector is combined across ranks, and the rows' entries are read back.
    """

    def exchange(hidden: torch.Tensor, slots: torch.Tensor, num_slots: int) -> torch.Tensor:
        local = torch.zeros(num_slots, dtype=torch.float32, device=hidden.device)
        if hidden.shape[0]:
            local[slots] = hidden.float().abs().amax(dim=-1)
        return reduce(local)[slots]

    return exchange
