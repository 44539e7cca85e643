"""Kernels layer: generic quantized math on tensors, one reference twin per kernel.

Nothing here knows a file format or a quant-type name: schemes hand canonical
tensors (int8 weights ``[N, K]``, float32 scales ``[N]``, ...) to a ``make_*``
factory, which picks the fastest kernel that this platform supports and that
can implement the requested math (first match in a priority list ending with a
plain-torch reference).
"""

from vllm_modelslim.kernels.activation_quant import (
    quantize_dynamic_per_token,
    quantize_dynamic_per_token_reference,
    quantize_static_per_tensor,
    quantize_static_per_tensor_reference,
)
from vllm_modelslim.kernels.kronecker import kronecker_transform, kronecker_transform_reference
from vllm_modelslim.kernels.scaled_int8_mm import (
    ScaledInt8MMKernel,
    make_scaled_int8_mm,
    scaled_int8_mm_reference,
)
from vllm_modelslim.kernels.weight_only import (
    WeightOnlyInt4Kernel,
    WeightOnlyInt8Kernel,
    dequantize_int4_weight,
    dequantize_int8_weight,
    make_weight_only_int4,
    make_weight_only_int8,
    weight_only_int4_reference,
    weight_only_int8_reference,
)

__all__ = [
    "ScaledInt8MMKernel",
    "WeightOnlyInt4Kernel",
    "dequantize_int4_weight",
    "kronecker_transform",
    "kronecker_transform_reference",
    "make_weight_only_int4",
    "weight_only_int4_reference",
    "WeightOnlyInt8Kernel",
    "dequantize_int8_weight",
    "make_scaled_int8_mm",
    "make_weight_only_int8",
    "quantize_dynamic_per_token",
    "quantize_dynamic_per_token_reference",
    "quantize_static_per_tensor",
    "quantize_static_per_tensor_reference",
    "scaled_int8_mm_reference",
    "weight_only_int8_reference",
]
