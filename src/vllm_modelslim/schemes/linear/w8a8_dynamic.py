"""``W8A8_DYNAMIC`` linear: per-token dynamic int8 activations × per-channel int8 weights.

Math (spec §4.2, ModelSlim / vLLM Ascend ``AscendW8A8DynamicLinearMethod``)::

    s_x[m] = max_k |x[m, k]| / 127,   x_q = round(x / s_x)
    y[m, n] = (Σ_k x_q[m, k] · W_q[n, k]) · s_x[m] · s_w[n] + bias[n]

On disk per shard: ``weight`` int8 [o, i], ``weight_scale`` [o, 1],
``weight_offset`` [o, 1] (zeros: the weights are symmetric; absent in
LLM-Compressor checkpoints, whose MoE experts run this scheme, spec §6).
"""

from __future__ import annotations

import torch

from vllm_modelslim.schemes.base import LinearScheme
from vllm_modelslim.schemes.linear.checkpoint_tensors import (
    INT8_WEIGHT,
    OPTIONAL_SYMMETRIC_WEIGHT_OFFSET,
    WEIGHT_SCALE,
)
from vllm_modelslim.schemes.linear.dynamic_forward import apply_dynamic, build_dynamic_kernels
from vllm_modelslim.schemes.registry import register_scheme


@register_scheme("W8A8_DYNAMIC", "linear")
class W8A8DynamicLinearScheme(LinearScheme):
    """Per-token dynamic W8A8 linear layer."""

    quant_type = "W8A8_DYNAMIC"

    def checkpoint_tensors(self):
        return (INT8_WEIGHT, WEIGHT_SCALE, OPTIONAL_SYMMETRIC_WEIGHT_OFFSET)

    def dynamic_int8_channel_weight(self, layer):
        return layer.weight.data, self.float_param(layer, "weight_scale").reshape(-1)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        weight, weight_scale = self.dynamic_int8_channel_weight(layer)
        build_dynamic_kernels(layer, weight, weight_scale, self.quant_type)

    def apply(self, layer, x, bias):
        return apply_dynamic(layer.modelslim_kernel, x, bias, quantizer=layer.modelslim_act_quant)
