"""``W8A16`` linear: weight-only per-channel int8, activations stay in float.

Math (spec §4.3 with ERRATA 1: the offset is a zero point that is subtracted;
vllm-ascend's NPU op adds it, which is only harmless for symmetric weights)::

    W[n, k] = (W_q[n, k] − offset[n]) · scale[n]
    y = x · Wᵀ + bias

On disk per shard: ``weight`` int8 [o, i], ``weight_scale`` [o, 1],
``weight_offset`` [o, 1] (integer zero points; zeros for symmetric configs).
"""

from __future__ import annotations

import torch

from vllm_modelslim.kernels import make_weight_only_int8
from vllm_modelslim.schemes.base import LinearScheme, apply_2d
from vllm_modelslim.schemes.linear.checkpoint_tensors import INT8_WEIGHT, WEIGHT_OFFSET, WEIGHT_SCALE
from vllm_modelslim.schemes.registry import register_scheme


@register_scheme("W8A16", "linear")
class W8A16LinearScheme(LinearScheme):
    """Weight-only int8 linear layer with optional per-channel zero points."""

    quant_type = "W8A16"

    def checkpoint_tensors(self):
        return (INT8_WEIGHT, WEIGHT_SCALE, WEIGHT_OFFSET)

    def weight_only_int8_channel_weight(self, layer):
        weight_scale = self.float_param(layer, "weight_scale").reshape(-1)
        zero_point = self.float_param(layer, "weight_offset").reshape(-1)
        return layer.weight.data, weight_scale, zero_point

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        weight, weight_scale, zero_point = self.weight_only_int8_channel_weight(layer)
        layer.modelslim_kernel = make_weight_only_int8(
            weight, weight_scale, zero_point, layer.modelslim_params_dtype, label=self.quant_type
        )

    def apply(self, layer, x, bias):
        kernel = layer.modelslim_kernel
        return apply_2d(x, lambda x2d: kernel(x2d, bias))
