"""Reference int8 KV cache (ModelSlim C8) for the pure-torch model: quantize-dequantize in the cache update.

As msmodelslim's own calibration does (its ``dynamic_cache`` processor hooks
``DynamicCache.update``), the keys and values that attention reads come back
from the cache as ``(clamp(round(x / s + o), −128, 127) − o)·s`` per channel
``(kv_head, dim)``, computed in float32 and written independently of the
plugin's kernels, so that it can serve as their oracle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache

_LAYER_INDEX = re.compile(r"layers\.(\d+)\.")


@dataclass(frozen=True)
class ReferenceKVQuant:
    """float32 per-channel parameters ``[kv_heads, head_dim]`` of one layer's keys and values."""

    key_scale: torch.Tensor
    key_offset: torch.Tensor
    value_scale: torch.Tensor
    value_offset: torch.Tensor

    @staticmethod
    def _round_trip(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        # x: [batch, kv_heads, seq, head_dim]; parameters broadcast as [kv_heads, 1, head_dim]
        s, o = scale[:, None, :], offset[:, None, :]
        q = torch.clamp(torch.round(x.float() / s + o), -128, 127)
        return ((q - o) * s).to(x.dtype)

    def keys(self, x: torch.Tensor) -> torch.Tensor:
        return self._round_trip(x, self.key_scale, self.key_offset)

    def values(self, x: torch.Tensor) -> torch.Tensor:
        return self._round_trip(x, self.value_scale, self.value_offset)


def c8_layer_params(
    tensors: dict[str, torch.Tensor], num_kv_heads: int, head_dim: int
) -> dict[int, ReferenceKVQuant]:
    """Pop every ``*.{k,v}_proj.kv_cache_{scale,offset}`` from ``tensors``; parameters by layer index."""
    found: dict[int, dict[str, torch.Tensor]] = {}
    for name in [n for n in tensors if ".kv_cache_" in n]:
        match = _LAYER_INDEX.search(name)
        if match is None:
            raise ValueError(f"cannot tell the layer of KV-cache tensor {name!r}")
        part = name.rsplit(".", 2)[-2][0] + "_" + name.rsplit("_", 1)[-1]  # k_scale, v_offset, ...
        values = tensors.pop(name).float().reshape(-1)
        found.setdefault(int(match.group(1)), {})[part] = values.expand(num_kv_heads * head_dim).reshape(
            num_kv_heads, head_dim
        )
    return {
        layer: ReferenceKVQuant(p["k_scale"], p["k_offset"], p["v_scale"], p["v_offset"])
        for layer, p in found.items()
    }


class QuantDequantKVCache(DynamicCache):
    """A ``DynamicCache`` whose stored (and returned) keys/values went through int8 and back."""

    def __init__(self, layers: dict[int, ReferenceKVQuant], **kwargs):
        super().__init__(**kwargs)
        self.quant_layers = layers

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        quant = self.quant_layers.get(layer_idx)
        if quant is not None:
            key_states, value_states = quant.keys(key_states), quant.values(value_states)
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)
