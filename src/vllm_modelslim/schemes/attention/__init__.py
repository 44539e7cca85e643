"""Attention-layer schemes (KV-cache quantization)."""

from vllm_modelslim.schemes.attention.c8_kv_cache import (
    C8_DEQUANTIZE_SUBTRACTS_OFFSET,
    AttentionContext,
    C8KVCacheMethod,
)

__all__ = ["C8_DEQUANTIZE_SUBTRACTS_OFFSET", "AttentionContext", "C8KVCacheMethod"]
