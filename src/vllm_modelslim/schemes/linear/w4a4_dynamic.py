"""``W4A4_DYNAMIC`` linear: per-token int4 activations × per-channel int4 weights.

Math (spec §4.7, ``npu_dynamic_quant(x, quint4x2)`` and ``npu_quant_matmul``)::

    x_q = round(x / s_x),  s_x[m] = max_k |x[m, k]| / 7          (int4)
    y[m, n] = s_x[m] · s[n] · Σ_k x_q[m, k] · q[n, k] + bias[n]

On disk per shard: ``weight`` int8 ``[o, i]`` holding int4 values (not
packed), ``weight_scale``/``weight_offset`` ``[o, 1]`` (zeros). The NPU writes
the product in fp16 before casting to the model dtype; this scheme keeps the
float32 epilogue (no fp16 overflow or extra rounding).
"""

from __future__ import annotations

import torch

from vllm_modelslim.schemes.base import LinearScheme
from vllm_modelslim.schemes.linear.checkpoint_tensors import (
    INT4_IN_INT8_WEIGHT,
    SYMMETRIC_WEIGHT_OFFSET,
    WEIGHT_SCALE,
)
from vllm_modelslim.schemes.linear.dynamic_forward import apply_dynamic, build_dynamic_kernels
from vllm_modelslim.schemes.linear.symmetric import require_int4_values
from vllm_modelslim.schemes.registry import register_scheme

ACTIVATION_BITS = 4


@register_scheme("W4A4_DYNAMIC", "linear")
class W4A4DynamicLinearScheme(LinearScheme):
    """Per-token int4 × int4 linear layer."""

    quant_type = "W4A4_DYNAMIC"
    weight_bits = 4

    def checkpoint_tensors(self):
        return (INT4_IN_INT8_WEIGHT, WEIGHT_SCALE, SYMMETRIC_WEIGHT_OFFSET)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        weight = require_int4_values(self, layer.weight.data)
        scale = self.float_param(layer, "weight_scale").reshape(-1)
        build_dynamic_kernels(
            layer, weight, scale, self.quant_type, bits=ACTIVATION_BITS, weight_bits=self.weight_bits
        )

    def apply(self, layer, x, bias):
        return apply_dynamic(
            layer.modelslim_kernel, x, bias, bits=ACTIVATION_BITS, quantizer=layer.modelslim_act_quant
        )
