"""Full-row dynamic scales of row-parallel layers under tensor parallelism: the ranks' row maxima combined.

A row-parallel layer (o_proj, down_proj, MLA o_proj, the experts' w2 under
pure tensor parallelism) holds one K-slice per rank. ModelSlim's dynamic
per-token scale is over the full row (spec §4.2), so each rank's local row
maxima ``[T]`` are gathered from all ranks and their maximum taken before
quantizing: the ranks' integer partial sums then add up to the unsplit
layer's. vLLM Ascend's NPU kernels use each rank's own maximum instead (tp=2
differs from tp=1 there).

The gather is vLLM's ``tensor_model_parallel_all_gather``, the same
communicator path as the all-reduce that ends every row-parallel layer
(traced by vLLM's ``torch.compile`` like that all-reduce; ``torch.ops.vllm.all_gather``
on platforms with custom-op collectives), on a ``[T, 1]`` float32 tensor:
one message of ``4·T·tp`` bytes per row-parallel dynamic layer.
"""

from __future__ import annotations

import torch
from vllm.distributed import tensor_model_parallel_all_gather

from vllm_modelslim.kernels.activation_quant import RowMaxReduce


def tensor_parallel_row_max(local_max: torch.Tensor) -> torch.Tensor:
    """Maximum over the tensor-parallel ranks of each row's local maximum.

    Args:
        local_max: float32 ``[T]`` (or ``[..., T]``), this rank's ``max_k |x|`` over its K-slice.

    Returns:
        float32 of ``local_max``'s shape, identical on every rank of the group.
    """
    gathered = tensor_model_parallel_all_gather(local_max.unsqueeze(-1), dim=-1)  # [..., T, tp]
    return gathered.amax(dim=-1)


def row_max_reduce_for(row_parallel: bool, tp_size: int) -> RowMaxReduce | None:
    """The combine a layer's dynamic quantizer needs: only row-parallel layers split over tp > 1 ranks."""
    return tensor_parallel_row_max if row_parallel and tp_size > 1 else None
