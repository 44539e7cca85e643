"""vLLM parameter class for tensors that every fused shard stores separately."""

from __future__ import annotations

import torch
from vllm.model_executor.parameter import BasevLLMParameter


class ShardStackParameter(BasevLLMParameter):
    """One tensor per shard of a fused layer, stacked on a new leading dim ``[S, ...]``.

    vLLM's ``PerTensorScaleParameter`` keeps one *scalar* per shard; FlatQuant
    stores whole matrices (``left_trans``, ``right_trans``) per q/k/v or
    gate/up shard, and the shards need not agree (msmodelslim writes its own
    clip ratio for q_proj). Shard ids ``q/k/v`` or ``0, 1, ...`` select the slot;
    an unfused layer uses slot 0.
    """

    def _load(self, loaded_weight: torch.Tensor, shard_id: str | int | None) -> None:
        slot = self.data[0 if shard_id is None else self._shard_id_as_int(shard_id)]
        if slot.shape != loaded_weight.shape:
            raise ValueError(
                f"per-shard tensor of shape {tuple(loaded_weight.shape)} for a {tuple(slot.shape)} slot"
            )
        slot.copy_(loaded_weight)

    def load_merged_column_weight(self, loaded_weight: torch.Tensor, **kwargs) -> None:
        self._load(loaded_weight, kwargs.get("shard_id"))

    def load_qkv_weight(self, loaded_weight: torch.Tensor, **kwargs) -> None:
        self._load(loaded_weight, kwargs.get("shard_id"))

    def load_column_parallel_weight(self, loaded_weight: torch.Tensor) -> None:
        self._load(loaded_weight, None)

    def load_row_parallel_weight(self, loaded_weight: torch.Tensor) -> None:
        self._load(loaded_weight, None)
