"""Static per-channel int8 quantization of attention keys and values (an int8 KV cache).

Each KV channel ``(kv_head h, dim d)`` has a fixed scale ``s[h, d] > 0`` and an
integer offset ``o[h, d]``; a key or value vector is stored as

    q = clamp(round(x / s + o), -128, 127)        (int8, round half to even)

and read back as ``(q - dequant_offset) · s`` in the compute dtype. The math is
ModelSlim's ``int_quantize`` / ``int_dequantize`` (msmodelslim 26.1.0
``ir/api/impl/int_quantization.py``, used by its ``FakeQuantDynamicCache``),
evaluated in float32. Which offset the read subtracts is the caller's choice
(:attr:`KVChannelQuant.dequant_offset`); this module knows nothing about
checkpoints.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

INT8_MIN, INT8_MAX = -128, 127


def quantize_kv_int8(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """``clamp(round(x / scale + offset), -128, 127)`` as int8.

    Args:
        x: keys or values ``[tokens, kv_heads, head_dim]``, any float dtype.
        scale: float32 ``[kv_heads, head_dim]``, > 0.
        offset: float32 ``[kv_heads, head_dim]``, integer-valued.

    Returns:
        int8 ``[tokens, kv_heads, head_dim]``.
    """
    q = torch.round(x.to(torch.float32) / scale + offset)
    return q.clamp_(INT8_MIN, INT8_MAX).to(torch.int8)


def dequantize_kv_int8(
    q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """``(q - offset) · scale`` in float32, returned in ``dtype``.

    Args:
        q: int8 ``[..., kv_heads, head_dim]``.
        scale, offset: float32 ``[kv_heads, head_dim]``.
        dtype: output dtype (the model's compute dtype).
    """
    x = q.to(torch.float32)
    return x.sub_(offset).mul_(scale).to(dtype)


@dataclass(frozen=True)
class KVChannelQuant:
    """Per-channel int8 parameters of one attention layer's keys or values.

    Attributes:
        scale: float32 ``[kv_heads, head_dim]`` (> 0).
        offset: float32 ``[kv_heads, head_dim]``: the offset added when quantizing.
        dequant_offset: float32 ``[kv_heads, head_dim]``: the offset subtracted
            when dequantizing (``offset``, or zeros for a read rule that ignores it).
    """

    scale: torch.Tensor
    offset: torch.Tensor
    dequant_offset: torch.Tensor

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """int8 ``[tokens, kv_heads, head_dim]`` of ``x`` (see :func:`quantize_kv_int8`)."""
        return quantize_kv_int8(x, self.scale, self.offset)

    def dequantize(self, q: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``q`` read back in ``dtype`` (see :func:`dequantize_kv_int8`)."""
        return dequantize_kv_int8(q, self.scale, self.dequant_offset, dtype)

    def round_trip(self, x: torch.Tensor) -> torch.Tensor:
        """What a read returns after ``x`` was written: ``dequantize(quantize(x))`` in ``x.dtype``."""
        return self.dequantize(self.quantize(x), x.dtype)


@dataclass(frozen=True)
class Int8KVCacheParams:
    """The int8 KV-cache parameters of one attention layer (keys and values)."""

    key: KVChannelQuant
    value: KVChannelQuant

    @functools.cached_property
    def joint(self) -> KVChannelQuant:
        """Keys and values side by side: parameters ``[kv_heads, 2·head_dim]`` for ``cat([k, v], -1)``."""
        return KVChannelQuant(
            *(
                torch.cat([getattr(self.key, f), getattr(self.value, f)], dim=-1)
                for f in ("scale", "offset", "dequant_offset")
            )
        )
