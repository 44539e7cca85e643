"""Attention-layer schemes (the C8 int8 KV cache); importing this package registers them."""

from vllm_modelslim.schemes.attention.c8_kv_cache import (
    AttentionContext,
    C8KVCacheScheme,
    channel_quant,
    rank_kv_channels,
)

__all__ = ["AttentionContext", "C8KVCacheScheme", "channel_quant", "rank_kv_channels"]
