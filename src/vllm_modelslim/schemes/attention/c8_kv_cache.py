"""ModelSlim C8: a static per-channel int8 KV cache for dense attention (spec §4.9).

The scheme knows the four per-channel tensors of a C8 attention layer
(:data:`~vllm_modelslim.format.kv_cache_c8.C8_TENSORS`): how each loads (1 or
``kv_channels`` values), their value rules, and how one tensor-parallel
rank's ``[kv_heads, head_dim]`` float32 quantization parameters are cut from
them. The vLLM side (``plugin/kv_cache_method.py``) registers them on vLLM's
``Attention`` layer through its KV-cache quant-method hook and enables the
int8 cache with what :meth:`C8KVCacheScheme.cache_params` returns.

Numerics (ModelSlim's definition, as its ``FakeQuantDynamicCache`` computes
during calibration): every key and value is written as
``q = clamp(round(x / s + o), −128, 127)`` and every read (prompt tokens
included) returns ``(q − o)·s``, the exact inverse of its quantization, as
vLLM Ascend's fallback (gather) prefill path also computes. vLLM Ascend's NPU
decode path (fused infer attention, ``antiquant_mode=0``) passes only the
scales and so computes ``q·s``; the two agree whenever the offsets are zero,
which is what msmodelslim writes for the usual symmetric ``dynamic_cache``
config. For an asymmetric one the NPU decode result is off by ``o·s`` per
channel and ours is not (``tests/checkpoints/test_c8_facts.py`` measures it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from vllm_modelslim.format.checkpoint import CheckpointIndex
from vllm_modelslim.format.description import QuantDescription
from vllm_modelslim.format.errors import CheckpointTensorError, UnknownQuantTypeError
from vllm_modelslim.format.kv_cache_c8 import C8, C8_TENSORS, C8Tensor, c8_size_ok
from vllm_modelslim.format.value_checks import check_value_rule
from vllm_modelslim.kernels.kv_cache_int8 import Int8KVCacheParams, KVChannelQuant
from vllm_modelslim.schemes.registry import register_scheme

DEFAULT_KV_CACHE_DTYPES = ("auto",)


@dataclass(frozen=True)
class AttentionContext:
    """What the C8 scheme knows about one attention layer.

    Attributes:
        prefix: vLLM layer prefix (``model.layers.0.self_attn.attn``).
        checkpoint_prefix: prefix of its tensors on disk (``model.layers.0.self_attn``).
        description: the parsed description (its ``source`` names the file).
        checkpoint: safetensors header index of the model folder, when local.
        kv_channels: ``num_key_value_heads·head_dim`` of the whole model (all ranks).
        int8_storage: store the cache as int8 where the backend allows it
            (False: keep the model dtype and round-trip every write).
    """

    prefix: str
    checkpoint_prefix: str
    description: QuantDescription
    checkpoint: CheckpointIndex | None
    kv_channels: int | None
    int8_storage: bool = True

    def file_of(self, tensor: C8Tensor) -> str:
        """The file storing ``tensor`` of this layer (else the description), for messages."""
        name = f"{self.checkpoint_prefix}.{tensor.suffix}"
        path = self.checkpoint.file_of(name) if self.checkpoint is not None else None
        return str(path) if path is not None else self.description.source


@register_scheme(C8, "attention")
class C8KVCacheScheme:
    """The C8 int8 KV cache of one attention layer: its tensors' loading, checks and per-rank slicing.

    Args:
        context: the layer's :class:`AttentionContext`.
    """

    def __init__(self, context: AttentionContext):
        self.context = context

    def check_kv_cache_dtype(self, kv_cache_dtype: str) -> None:
        """Refuse an engine KV-cache dtype other than ``auto`` (the checkpoint's cache is int8).

        Raises:
            UnknownQuantTypeError: e.g. ``--kv-cache-dtype fp8``.
        """
        if kv_cache_dtype not in DEFAULT_KV_CACHE_DTYPES:
            raise UnknownQuantTypeError(
                f"the checkpoint stores an int8 KV cache (C8) for this layer, which conflicts with "
                f"kv_cache_dtype={kv_cache_dtype!r}; leave the KV-cache dtype at 'auto'",
                file=self.context.description.source,
                layer=self.context.checkpoint_prefix,
            )

    def loader(self, tensor: C8Tensor) -> Callable[[torch.nn.Parameter, torch.Tensor], None]:
        """Weight loader of ``tensor``: checks its size, stores it as a flat float32 vector.

        The loader raises :class:`CheckpointTensorError` for a size other than
        1 or ``kv_channels`` (``num_key_value_heads·head_dim``).
        """
        channels = self.context.kv_channels

        def load(param: torch.nn.Parameter, loaded: torch.Tensor) -> None:
            if not c8_size_ok(loaded.shape, channels):
                raise CheckpointTensorError(
                    f"{tensor.suffix} has {loaded.numel()} values; expected {channels} "
                    "(num_key_value_heads·head_dim) or 1",
                    file=self.context.file_of(tensor),
                    layer=self.context.checkpoint_prefix,
                )
            param.data = loaded.detach().reshape(-1).to(torch.float32).clone()

        return load

    def cache_params(
        self, loaded: dict[str, torch.Tensor], heads: int, head_dim: int, rank: int, world_size: int
    ) -> Int8KVCacheParams:
        """Check the loaded values and cut this rank's ``[heads, head_dim]`` quantization parameters.

        Args:
            loaded: the four tensors by layer parameter name (``k_cache_scale``, ...),
                each 1 or ``kv_channels`` float32 values.
            heads, head_dim: this rank's KV heads and channels per head.
            rank, world_size: tensor-parallel position.

        Raises:
            InvalidScaleError: a scale is zero, negative, NaN or inf, or an offset
                is not an integer in [−128, 127] (names layer and file).
            CheckpointTensorError: the channel count does not split into this
                rank's kv heads.
        """
        channels = {}
        for tensor in C8_TENSORS:
            values = loaded[tensor.param]
            check_value_rule(
                values,
                tensor.values,
                what=tensor.suffix,
                layer=self.context.checkpoint_prefix,
                file=self.context.file_of(tensor),
            )
            try:
                channels[tensor.param] = rank_kv_channels(values, heads, head_dim, rank, world_size)
            except ValueError as exc:
                raise CheckpointTensorError(
                    f"{tensor.suffix}: {exc}",
                    file=self.context.file_of(tensor),
                    layer=self.context.checkpoint_prefix,
                ) from None
        return Int8KVCacheParams(
            key=channel_quant(channels["k_cache_scale"], channels["k_cache_offset"]),
            value=channel_quant(channels["v_cache_scale"], channels["v_cache_offset"]),
        )


def channel_quant(scale: torch.Tensor, offset: torch.Tensor) -> KVChannelQuant:
    """ModelSlim's per-channel rule: written ``round(x/s + o)``, read back ``(q − o)·s`` (module doc)."""
    return KVChannelQuant(scale=scale, offset=offset, dequant_offset=offset)


def rank_kv_channels(
    values: torch.Tensor, heads: int, head_dim: int, rank: int, world_size: int
) -> torch.Tensor:
    """One tensor-parallel rank's per-channel values, ``[heads, head_dim]``.

    Args:
        values: 1 value (broadcast) or ``total_kv_heads·head_dim`` values, head-major.
        heads: KV heads on this rank (vLLM's ``Attention.num_kv_heads``).
        head_dim: channels per head.
        rank, world_size: tensor-parallel position; with fewer KV heads than
            ranks, vLLM replicates each head and rank ``r`` holds head
            ``r·total/world_size`` (the same slicing as vLLM Ascend's C8 backend).

    Raises:
        ValueError: ``values`` is not a whole number of heads covering this rank's.
    """
    if values.numel() == 1:
        return values.reshape(1, 1).expand(heads, head_dim).contiguous()
    total_heads, remainder = divmod(values.numel(), head_dim)
    if remainder or total_heads < heads:
        raise ValueError(
            f"{values.numel()} values are not a whole number of kv heads of {head_dim} channels "
            f"covering this rank's {heads}"
        )
    start = rank * total_heads // world_size
    return values.reshape(total_heads, head_dim)[start : start + heads].contiguous()
