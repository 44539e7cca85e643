"""``W4A8_DYNAMIC`` linear: per-token int8 activations × int4 weights (what the name says).

Math (spec §4.5; exact integer accumulation, ERRATA 5)::

    x_q = round(x / s_x),  s_x[m] = max_k |x[m, k]| / 127
    per channel:  y[m, n] = s_x[m] · s[n] · Σ_k x_q[m, k] · q[n, k] + bias[n]
    per group:    y[m, n] = s_x[m] · Σ_j s[n]·s2[n, j] · Σ_{k in group j} x_q[m, k] · q[n, k] + bias[n]

On disk per shard, every layout published ModelSlim checkpoints use:

* ``version`` "1.0.0" (msmodelslim 26.1's new and old pipelines): ``weight``
  int8 ``[o/2, i]`` with two int4 per byte along the output dim;
* ``version`` "0" (older publications): ``weight`` int8 ``[o, i]``, one int4 per byte;

plus ``weight_scale``/``weight_offset`` ``[o, 1]``, for per-group checkpoints
``weight_scale_second``/``weight_offset_second`` ``[o, i/g]``, and ``scale_bias``
(``[o, 1]``; ``[o, 16]`` on o_proj/down_proj), which is the Ascend kernel's
correction term ``8·Σ_k q·s`` and is not needed for the exact product.

vllm-ascend removed this linear scheme; its last version did **not** quantize
the activations (``y = x · (q·s)ᵀ`` with bf16 ``x``, a W4A16 computation),
and rounded the combined per-group scale through fp16. This scheme quantizes
the activations as the quant type says; ``tests/checkpoints`` shows the two
differ exactly by the activation rounding.
"""

from __future__ import annotations

import torch

from vllm_modelslim.kernels.int4_packing import unpack_int4_pairs
from vllm_modelslim.schemes.base import LayerContext, LinearScheme, infer_group_size
from vllm_modelslim.schemes.linear.checkpoint_tensors import (
    INT4_IN_INT8_WEIGHT,
    INT4_PAIRS_WEIGHT,
    SECOND_WEIGHT_OFFSET,
    SECOND_WEIGHT_SCALE,
    SYMMETRIC_WEIGHT_OFFSET,
    WEIGHT_SCALE,
    scale_bias,
)
from vllm_modelslim.schemes.linear.dynamic_forward import apply_dynamic, build_dynamic_kernels
from vllm_modelslim.schemes.linear.symmetric import require_int4_values
from vllm_modelslim.schemes.registry import register_scheme


@register_scheme("W4A8_DYNAMIC", "linear")
class W4A8DynamicLinearScheme(LinearScheme):
    """Per-token int8 × int4 linear layer, per-channel or per-group weight scales."""

    quant_type = "W4A8_DYNAMIC"
    weight_bits = 4

    def __init__(self, context: LayerContext):
        super().__init__(context)
        self.packed = self._is_packed(context)
        self.weight_spec = INT4_PAIRS_WEIGHT if self.packed else INT4_IN_INT8_WEIGHT
        second = context.has_tensor(SECOND_WEIGHT_SCALE.suffix)
        self.per_group = second if second is not None else context.description.group_size > 0
        self._group_size = (
            infer_group_size(context, self.weight_spec, SECOND_WEIGHT_SCALE.suffix) if self.per_group else 0
        )

    @staticmethod
    def _is_packed(context: LayerContext) -> bool:
        """Two int4 per byte? From the headers (weight rows = scale rows / 2), else ``version`` "1.0.0"."""
        weight, scale = context.stored_shape("weight"), context.stored_shape("weight_scale")
        if weight is not None and scale is not None:
            return 2 * weight[0] == scale[0]
        return context.description.version == "1.0.0"

    @property
    def group_size(self) -> int:
        return self._group_size

    def checkpoint_tensors(self):
        tensors = (
            self.weight_spec,
            WEIGHT_SCALE,
            SYMMETRIC_WEIGHT_OFFSET,
            scale_bias(self.context.row_parallel),
        )
        return tensors + (SECOND_WEIGHT_SCALE, SECOND_WEIGHT_OFFSET) if self.per_group else tensors

    def _int4_weight_and_channel_scale(self, layer: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """int4 values one per int8 ``[N, K]`` and the per-channel scale ``[N]`` float32."""
        weight = layer.weight.data
        weight = unpack_int4_pairs(weight, dim=0) if self.packed else require_int4_values(self, weight)
        return weight, self.float_param(layer, "weight_scale").reshape(-1)

    def dynamic_int8_channel_weight(self, layer):
        return None if self.per_group else self._int4_weight_and_channel_scale(layer)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        weight, scale = self._int4_weight_and_channel_scale(layer)
        if self.per_group:
            scale = scale.unsqueeze(1) * self.float_param(layer, "weight_scale_second")
        build_dynamic_kernels(layer, weight, scale, self.quant_type, weight_bits=self.weight_bits)

    def apply(self, layer, x, bias):
        return apply_dynamic(layer.modelslim_kernel, x, bias, quantizer=layer.modelslim_act_quant)
