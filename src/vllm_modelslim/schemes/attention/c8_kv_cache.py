"""ModelSlim C8: a static per-channel int8 KV cache for dense attention (spec §4.9).

The scheme loads the four per-channel tensors of a C8 attention layer
(:data:`~vllm_modelslim.format.kv_cache_c8.C8_TENSORS`) into vLLM's
``Attention`` layer through vLLM's KV-cache quant-method hook
(``BaseKVCacheMethod``; checkpoint names are renamed by the config's
``get_cache_scale_mapper``), checks them, and hands canonical
``[kv_heads, head_dim]`` float32 parameters to
:func:`~vllm_modelslim.kernels.int8_kv_attention.enable_int8_kv_cache`.

Numerics (ModelSlim's definition, as its ``FakeQuantDynamicCache`` computes
during calibration): every key and value is written as
``q = clamp(round(x / s + o), −128, 127)`` and every read (prompt tokens
included) returns ``(q − o)·s``. See :data:`C8_DEQUANTIZE_SUBTRACTS_OFFSET`
for the one place where this differs from vLLM Ascend's NPU kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size
from vllm.logger import init_logger
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig
from vllm.model_executor.layers.quantization.kv_cache import BaseKVCacheMethod

from vllm_modelslim.format.checkpoint import CheckpointIndex
from vllm_modelslim.format.description import QuantDescription
from vllm_modelslim.format.errors import CheckpointTensorError, UnknownQuantTypeError
from vllm_modelslim.format.kv_cache_c8 import C8, C8_TENSORS, C8Tensor, c8_size_ok
from vllm_modelslim.format.value_checks import check_value_rule
from vllm_modelslim.kernels.int8_kv_attention import enable_int8_kv_cache
from vllm_modelslim.kernels.kv_cache_int8 import Int8KVCacheParams, KVChannelQuant
from vllm_modelslim.schemes.registry import register_scheme

logger = init_logger(__name__)

C8_DEQUANTIZE_SUBTRACTS_OFFSET = True
"""The dequantization rule of the C8 KV cache: ``(q − offset)·scale`` (True) or ``q·scale``.

We follow ModelSlim: its calibration fake-quantizes the cache with
``int_dequantize`` = ``(q − offset)·scale``, the exact inverse of its
quantization, and vLLM Ascend's fallback (gather) prefill path does the same.
vLLM Ascend's NPU decode path (fused infer attention, ``antiquant_mode=0``)
passes only the scales and so computes ``q·scale``. The two agree whenever the
offsets are zero, which is what msmodelslim writes for the usual symmetric
``dynamic_cache`` config; for an asymmetric one (non-zero offsets) the NPU
decode result is off by ``offset·scale`` per channel and ours is not.
"""

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
class C8KVCacheMethod(BaseKVCacheMethod):
    """vLLM KV-cache quant method of a C8 attention layer.

    Args:
        quant_config: the owning quantization config.
        context: the layer's :class:`AttentionContext`.
    """

    def __init__(self, quant_config: QuantizationConfig, context: AttentionContext):
        super().__init__(quant_config)
        self.context = context

    def create_weights(self, layer: torch.nn.Module) -> None:
        """Register ``k_cache_scale``/``k_cache_offset``/``v_cache_scale``/``v_cache_offset`` (float32).

        Each starts as one value and takes the loaded size (1 or ``kv_channels``).

        Raises:
            UnknownQuantTypeError: the engine was asked for another KV-cache dtype
                (``--kv-cache-dtype fp8``) than the checkpoint's int8 cache.
        """
        if layer.kv_cache_dtype not in DEFAULT_KV_CACHE_DTYPES:
            raise UnknownQuantTypeError(
                f"the checkpoint stores an int8 KV cache (C8) for this layer, which conflicts with "
                f"kv_cache_dtype={layer.kv_cache_dtype!r}; leave the KV-cache dtype at 'auto'",
                file=self.context.description.source,
                layer=self.context.checkpoint_prefix,
            )
        super().create_weights(layer)  # vLLM's q/k/v/prob scales (they stay 1.0)
        for tensor in C8_TENSORS:
            fill = 1.0 if tensor.suffix.endswith("scale") else 0.0
            param = torch.nn.Parameter(torch.full((1,), fill, dtype=torch.float32), requires_grad=False)
            param.weight_loader = self._loader(tensor)  # type: ignore[attr-defined]
            layer.register_parameter(tensor.param, param)

    def _loader(self, tensor: C8Tensor) -> Callable[[torch.nn.Parameter, torch.Tensor], None]:
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

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        """Check the loaded values, build this rank's ``[kv_heads, head_dim]`` parameters, enable the cache.

        Raises:
            InvalidScaleError: a scale is zero, negative, NaN or inf, or an offset
                is not an integer in [−128, 127] (names layer and file).
            CheckpointTensorError: the channel count does not split into this
                rank's kv heads.
        """
        super().process_weights_after_loading(layer)
        channels = {}
        for tensor in C8_TENSORS:
            values = getattr(layer, tensor.param).data
            check_value_rule(
                values,
                tensor.values,
                what=tensor.suffix,
                layer=self.context.checkpoint_prefix,
                file=self.context.file_of(tensor),
            )
            channels[tensor.param] = self._rank_channels(layer, tensor, values)
        params = Int8KVCacheParams(
            key=self._channel_quant(channels["k_cache_scale"], channels["k_cache_offset"]),
            value=self._channel_quant(channels["v_cache_scale"], channels["v_cache_offset"]),
        )
        path = enable_int8_kv_cache(layer, params, int8_storage=self.context.int8_storage)
        logger.info_once("ModelSlim C8 KV cache: %s (%s)", path, type(layer.impl).__name__)

    @staticmethod
    def _channel_quant(scale: torch.Tensor, offset: torch.Tensor) -> KVChannelQuant:
        dequant_offset = offset if C8_DEQUANTIZE_SUBTRACTS_OFFSET else torch.zeros_like(offset)
        return KVChannelQuant(scale=scale, offset=offset, dequant_offset=dequant_offset)

    def _rank_channels(self, layer: torch.nn.Module, tensor: C8Tensor, values: torch.Tensor) -> torch.Tensor:
        rank, world = get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size()
        try:
            return rank_kv_channels(values, layer.num_kv_heads, layer.head_size, rank, world)
        except ValueError as exc:
            raise CheckpointTensorError(
                f"{tensor.suffix}: {exc}",
                file=self.context.file_of(tensor),
                layer=self.context.checkpoint_prefix,
            ) from None


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
