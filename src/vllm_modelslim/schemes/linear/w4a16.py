"""``W4A16`` linear: weight-only int4 with per-group scales (and zero points).

Math (ERRATA 1/4; the same as LLM-Compressor's wNa16 ``pack-quantized``)::

    W[n, k] = (q[n, k] − offset[n, k // g]) · scale[n, k // g]      q in [−8, 7]
    y = x · Wᵀ + bias

On disk per shard, either layout (picked from the checkpoint's headers):

* ModelSlim (old pipeline, ``version`` "1.0.0", ERRATA 4): ``weight`` int8
  ``[o/2, i]``, two int4 per byte along the output dim (low nibble = row 2k);
  ``weight_scale``, ``weight_offset`` ``[o, i/g]``; ``group_size`` in the description.
* LLM-Compressor ``pack-quantized`` (spec §4.4): ``weight_packed`` int32
  ``[o, i/8]`` (eight offset-8 nibbles, LSB first, along the input dim),
  ``weight_scale`` ``[o, i/g]``, ``weight_shape`` ``[2]``; symmetric.

vllm-ascend has no W4A16 linear scheme, so it cannot run either layout.
"""

from __future__ import annotations

import torch

from vllm_modelslim.format.errors import CheckpointTensorError
from vllm_modelslim.kernels import make_weight_only_int4
from vllm_modelslim.kernels.int4_packing import unpack_int4_from_int32, unpack_int4_pairs
from vllm_modelslim.schemes.base import LayerContext, LinearScheme, apply_2d, infer_group_size
from vllm_modelslim.schemes.linear.checkpoint_tensors import (
    GROUP_WEIGHT_OFFSET,
    GROUP_WEIGHT_SCALE,
    INT4_IN_INT32_WEIGHT,
    INT4_PAIRS_WEIGHT,
    PACKED_WEIGHT_SHAPE,
)
from vllm_modelslim.schemes.registry import register_scheme


@register_scheme("W4A16", "linear")
class W4A16LinearScheme(LinearScheme):
    """Weight-only int4 linear layer with per-group scales, ModelSlim or pack-quantized layout."""

    quant_type = "W4A16"
    weight_bits = 4

    def __init__(self, context: LayerContext):
        super().__init__(context)
        self.pack_quantized = bool(context.has_tensor(INT4_IN_INT32_WEIGHT.suffix))
        self.weight_spec = INT4_IN_INT32_WEIGHT if self.pack_quantized else INT4_PAIRS_WEIGHT
        self._group_size = infer_group_size(context, self.weight_spec, GROUP_WEIGHT_SCALE.suffix)

    @property
    def group_size(self) -> int:
        return self._group_size

    def checkpoint_tensors(self):
        if self.pack_quantized:
            return (INT4_IN_INT32_WEIGHT, GROUP_WEIGHT_SCALE, PACKED_WEIGHT_SHAPE)
        return (INT4_PAIRS_WEIGHT, GROUP_WEIGHT_SCALE, GROUP_WEIGHT_OFFSET)

    def unpacked_weight(self, layer: torch.nn.Module) -> torch.Tensor:
        """The layer's int4 weight as int8 ``[N, K]``."""
        if not self.pack_quantized:
            return unpack_int4_pairs(layer.weight.data, dim=0)
        packed = layer.weight_packed.data
        in_features = packed.shape[1] * INT4_IN_INT32_WEIGHT.packed_factor
        tp = getattr(layer, "tp_size", 1)  # weight_shape is the whole shard's; this rank holds a part
        for width, stored in zip(layer.logical_widths, layer.weight_shape.data.tolist(), strict=True):
            full = [width, in_features * tp] if self.context.row_parallel else [width * tp, in_features]
            if stored != full:
                raise CheckpointTensorError(
                    f"weight_shape {stored} does not match the shard's {full}",
                    file=self.error_file("weight_shape"),
                    layer=self.context.prefix,
                )
        return unpack_int4_from_int32(packed, dim=1, size=in_features)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        weight_scale = self.float_param(layer, "weight_scale")
        zero_point = self.float_param(layer, "weight_offset") if hasattr(layer, "weight_offset") else None
        layer.modelslim_kernel = make_weight_only_int4(
            self.unpacked_weight(layer),
            weight_scale,
            zero_point,
            layer.modelslim_params_dtype,
            label=self.quant_type,
        )

    def apply(self, layer, x, bias):
        kernel = layer.modelslim_kernel
        return apply_2d(x, lambda x2d: kernel(x2d, bias))
