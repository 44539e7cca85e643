"""vLLM's mixed-precision (weight-only) linear-kernel interface, computed with this project's kernels.

compressed-tensors wNa16 ``pack-quantized`` (``CompressedTensorsWNA16``; vLLM
scalar types ``uint4b8`` / ``uint8b128`` symmetric, ``uint4`` / ``uint8`` with
zero points)::

    q[n, k] = stored unsigned value (``bits`` per value, LSB first in int32 words)
    W[n, k] = (q[n, k] − z[n, k // g]) · s[n, k // g]      z = 2^(bits−1) when symmetric
    y = x · Wᵀ + bias

int4 runs ``WeightOnlyInt4Kernel`` (per-group or per-channel scales), int8
``WeightOnlyInt8Kernel`` (per-channel scales), the kernels of ModelSlim's
W4A16 / W8A16. Parameters are read in vLLM's canonical layout
(``permute_param_layout_``), so GPTQ-style layouts work as well as
compressed-tensors'.
"""

from __future__ import annotations

import torch
from vllm.model_executor.kernels.linear.mixed_precision.MPLinearKernel import (
    MPLinearKernel,
    MPLinearLayerConfig,
)
from vllm.model_executor.layers.quantization.utils.quant_utils import unpack_quantized_values_into_int32
from vllm.model_executor.parameter import permute_param_layout_
from vllm.platforms import current_platform
from vllm.scalar_type import scalar_types

from vllm_modelslim.kernels import make_weight_only_int4, make_weight_only_int8
from vllm_modelslim.plugin.compressed_tensors.kernel_choice import KERNELS_ENV, kernel_mode
from vllm_modelslim.plugin.linear_method import free_checkpoint_weights
from vllm_modelslim.schemes.base import apply_2d

SUPPORTED_WEIGHT_TYPES = (
    scalar_types.uint4b8,
    scalar_types.uint4,
    scalar_types.uint8b128,
    scalar_types.uint8,
)


class ModelSlimWNA16LinearKernel(MPLinearKernel):
    """CPU weight-only int4 / int8 linear for vLLM's mixed-precision schemes (compressed-tensors wNa16).

    Chosen (``auto``) for every layer it can run, ahead of vLLM's
    ``cpu_gemm_wna16``: on the hidden-2048 benchmark model (bf16, 2 cores,
    AVX512) decode at batch 1 measured 2.6× faster (16.2 against 6.3 tok/s;
    prefill 0.5×; a run disturbed by a stray process, see README); vLLM's op
    is also missing from AVX2 builds and fails for float32 activations
    ("not implemented for 'Float'").

    Layer parameters read: the packed weight (int32, 32/bits values per
    word), the scales ``[N, K/g]`` (``g = K`` per-channel) in the activation
    dtype and, for zero-point types, packed zero points ``[N/(32/bits), K/g]``.
    """

    @classmethod
    def get_min_capability(cls) -> int:
        return -1

    @classmethod
    def can_implement(cls, c: MPLinearLayerConfig) -> tuple[bool, str | None]:
        if not current_platform.is_cpu():
            return False, "vllm-modelslim's weight-only kernels replace vLLM's on CPU only"
        if kernel_mode() == "never":
            return False, f"{KERNELS_ENV}=never"
        if c.weight_type not in SUPPORTED_WEIGHT_TYPES:
            return False, f"weight type {c.weight_type} is not int4/int8"
        in_features = c.partition_weight_shape[0]
        group = in_features if c.group_size == -1 else c.group_size
        if in_features % group:
            return False, f"group size {group} does not divide K = {in_features}"
        if c.weight_type.size_bits == 8 and group != in_features:
            return False, "int8 weights take per-channel scales only"
        return True, None

    def _unsigned(self, layer: torch.nn.Module, name: str, input_dim: int, packed_dim: int) -> torch.Tensor:
        """Unpack a parameter to unsigned int32 values in the layout ``[out, in]``."""
        param = getattr(layer, name)
        permute_param_layout_(param, input_dim=input_dim, output_dim=0, packed_dim=packed_dim)
        return unpack_quantized_values_into_int32(param.data, self.config.weight_type, packed_dim)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        c = self.config
        bits = c.weight_type.size_bits
        midpoint = 1 << (bits - 1)
        in_features, out_features = c.partition_weight_shape
        q = self._unsigned(layer, self.w_q_name, input_dim=1, packed_dim=1)[:out_features, :in_features]
        weight = (q - midpoint).to(torch.int8)  # signed values, as the kernels take them
        scale_param = getattr(layer, self.w_s_name)
        permute_param_layout_(scale_param, input_dim=1, output_dim=0)
        scale = scale_param.data.float().reshape(out_features, -1)
        zero_point = None
        if c.zero_points:
            zp = self._unsigned(layer, self.w_zp_name, input_dim=1, packed_dim=0)[:out_features]
            zero_point = (zp - midpoint).float()  # signed zero point, ``q − z`` unchanged
        elif c.weight_type.bias != midpoint:
            raise ValueError(f"{c.weight_type}: bias {c.weight_type.bias} is not 2^(bits−1)")
        if bits == 4:
            kernel = make_weight_only_int4(weight, scale, zero_point, c.act_type)
        else:
            kernel = make_weight_only_int8(
                weight, scale.reshape(-1), None if zero_point is None else zero_point.reshape(-1), c.act_type
            )
        layer.modelslim_kernel = kernel
        free_checkpoint_weights(layer)

    def apply_weights(
        self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        kernel = layer.modelslim_kernel
        return apply_2d(x, lambda x2d: kernel(x2d, bias))
