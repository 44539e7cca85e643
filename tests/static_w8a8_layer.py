"""A (fused) static W8A8 linear layer as the plugin leaves it after loading, for the kernel tests."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def loaded_static_w8a8_layer(
    weight: torch.Tensor,
    quant_bias: torch.Tensor,
    deq_scale: torch.Tensor,
    scales: Sequence[float],
    offsets: Sequence[float],
    widths: Sequence[int],
    dtype: torch.dtype,
) -> torch.nn.Module:
    """Module holding ``weight`` int8 ``[N, K]``, ``quant_bias`` int32 ``[N]``, ``deq_scale`` ``[N]`` and
    one ``input_scale``/``input_offset`` per shard (float32), with the shards' ``logical_widths``."""
    layer = torch.nn.Module()
    params = {
        "weight": weight,
        "quant_bias": quant_bias,
        "deq_scale": deq_scale,
        "input_scale": torch.tensor(scales, dtype=torch.float32),
        "input_offset": torch.tensor(offsets, dtype=torch.float32),
    }
    for name, value in params.items():
        setattr(layer, name, torch.nn.Parameter(value, requires_grad=False))
    layer.logical_widths = list(widths)
    layer.modelslim_params_dtype = dtype
    return layer
