"""Attention with a static per-channel int8 KV cache, on top of vLLM's own attention backends.

vLLM writes a step's keys and values into the paged cache with the backend
impl's ``do_kv_cache_update`` and then runs attention reading every key and
value (prompt tokens included) from that cache. An int8 KV cache therefore
needs two things: quantize on write, dequantize on read. Two ways, picked per
backend by :func:`enable_int8_kv_cache`:

* **int8 storage** (vLLM's CPU backend, ``CPU_ATTN``): the paged cache is
  allocated as int8 (``layer.kv_cache_torch_dtype``), so it holds twice the
  tokens of a bf16 cache. Writes store ``quantize(k)``; each forward
  dequantizes only the blocks its sequences use into a scratch cache in the
  model dtype and runs vLLM's CPU attention kernel on it unchanged.
* **round trip** (any other backend with ``do_kv_cache_update``): the cache
  keeps the model dtype and writes store ``dequantize(quantize(k))``, which is
  exactly what the int8 path reads back. Same numerics, no memory saving.

The layer carries its parameters as ``layer.int8_kv_cache``
(:class:`~vllm_modelslim.kernels.kv_cache_int8.Int8KVCacheParams`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch
from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackendImpl

from vllm_modelslim.kernels.kv_cache_int8 import Int8KVCacheParams

INT8_STORAGE = "int8"
ROUND_TRIP = "round-trip"


@functools.cache
def _round_trip_impl(base: type) -> type:
    """``base`` (a vLLM attention impl) writing ``dequantize(quantize(k))`` in the model dtype."""

    class RoundTripInt8KV(base):  # type: ignore[misc,valid-type]
        __slots__ = ()  # keeps the impl's object layout, so its class can be swapped in place

        def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping) -> None:
            params: Int8KVCacheParams = layer.int8_kv_cache
            super().do_kv_cache_update(
                layer, params.key.round_trip(key), params.value.round_trip(value), kv_cache, slot_mapping
            )

    RoundTripInt8KV.__name__ = RoundTripInt8KV.__qualname__ = f"{base.__name__}RoundTripInt8KV"
    return RoundTripInt8KV


class Int8PagedCPUAttentionImpl(CPUAttentionBackendImpl):
    """vLLM's CPU attention with an int8 paged cache, dequantized per forward.

    vLLM allocates the cache as ``[num_blocks, kv_heads, block_size, 2·head_dim]``
    of ``layer.kv_cache_torch_dtype`` (int8 here). Only this class reads and
    writes it, token-major: viewed as ``[num_blocks, block_size, kv_heads,
    2·head_dim]``, a slot holds ``cat([quantize(k), quantize(v)], -1)``. A
    forward dequantizes the blocks its sequences use (one gather, keys and
    values together) and lets vLLM's own writer and CPU attention kernel run on
    that scratch cache in the model dtype (the kernel's block layout depends
    on the CPU ISA; the writer knows it).
    """

    __slots__ = ()  # keeps the impl's object layout, so its class can be swapped in place

    @staticmethod
    def _token_major(kv_cache: torch.Tensor) -> torch.Tensor:
        num_blocks, kv_heads, block_size, width = kv_cache.shape
        return kv_cache.view(num_blocks, block_size, kv_heads, width)

    def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping) -> None:
        if kv_cache.dtype != torch.int8:  # e.g. the profiling run before the cache exists
            return super().do_kv_cache_update(layer, key, value, kv_cache, slot_mapping)
        params: Int8KVCacheParams = layer.int8_kv_cache
        cache = self._token_major(kv_cache)
        count = slot_mapping.shape[0]
        key, value = key[:count], value[:count]
        valid = slot_mapping >= 0  # -1: padding tokens that own no slot
        if not bool(valid.all()):
            slot_mapping, key, value = slot_mapping[valid], key[valid], value[valid]
        slots = slot_mapping.long()
        block_size = cache.shape[1]
        cache[slots // block_size, slots % block_size] = torch.cat(
            [params.key.quantize(key), params.value.quantize(value)], dim=-1
        )

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, *args: Any, **kwargs: Any):
        if attn_metadata is None or kv_cache.dtype != torch.int8:
            return super().forward(layer, query, key, value, kv_cache, attn_metadata, output, *args, **kwargs)
        params: Int8KVCacheParams = layer.int8_kv_cache
        block_table = attn_metadata.block_table
        used, local_table = torch.unique(block_table.long(), return_inverse=True)
        cache = self._token_major(kv_cache)
        _, block_size, kv_heads, width = cache.shape
        tokens = used.numel() * block_size
        kv = params.joint.dequantize(cache[used].view(tokens, kv_heads, width), query.dtype)
        scratch = torch.empty((used.numel(), kv_heads, block_size, width), dtype=query.dtype)
        slots = torch.arange(tokens, dtype=torch.long)
        super().do_kv_cache_update(layer, kv[..., : width // 2], kv[..., width // 2 :], scratch, slots)
        local = dataclasses.replace(attn_metadata, block_table=local_table.to(block_table.dtype))
        return super().forward(layer, query, key, value, scratch, local, output, *args, **kwargs)


def enable_int8_kv_cache(layer: torch.nn.Module, params: Int8KVCacheParams, *, int8_storage: bool) -> str:
    """Make the vLLM ``Attention`` ``layer`` quantize keys/values on write and dequantize on read.

    Args:
        layer: a built vLLM ``Attention`` layer (its ``impl`` exists).
        params: per-channel parameters, ``[kv_heads, head_dim]`` per tensor,
            for this rank's kv heads.
        int8_storage: allow int8 storage where the backend supports it (CPU);
            False keeps the model dtype (e.g. when not every layer has an int8 cache).

    Returns:
        :data:`INT8_STORAGE` or :data:`ROUND_TRIP`: the path taken.

    Raises:
        NotImplementedError: the backend writes the cache inside its forward
            (no separate ``do_kv_cache_update``), so writes cannot be intercepted.
    """
    backend = layer.attn_backend
    impl_cls = type(layer.impl)
    separate_update = hasattr(impl_cls, "do_kv_cache_update")
    if getattr(backend, "forward_includes_kv_cache_update", True) or not separate_update:
        raise NotImplementedError(
            f"attention backend {backend.get_name()} writes its KV cache inside forward; an int8 KV "
            "cache needs a backend with a separate do_kv_cache_update (e.g. CPU_ATTN, FLASH_ATTN)"
        )
    layer.int8_kv_cache = params
    if int8_storage and impl_cls is CPUAttentionBackendImpl:
        layer.impl.__class__ = Int8PagedCPUAttentionImpl
        layer.kv_cache_torch_dtype = torch.int8
        return INT8_STORAGE
    layer.impl.__class__ = _round_trip_impl(impl_cls)
    return ROUND_TRIP
