"""Quantizer and forward shared by the dynamic-activation schemes (W8A8_DYNAMIC, W4A8_DYNAMIC, W4A4_DYNAMIC).

Under tensor parallelism a row-parallel layer (o_proj, down_proj, the experts'
w2) sees one K-slice of each row per rank. ModelSlim's scale is per token over
the full row (spec §4.2, ``s_x = max_k |x| / 127`` over all K), so the plugin
puts a combine of the ranks' row maxima on such a layer
(``layer.modelslim_row_max_reduce``, :data:`~vllm_modelslim.kernels.activation_quant.RowMaxReduce`);
every rank then quantizes its slice with the full row's scale and the ranks'
integer partial sums add up to the unsplit layer's. vLLM Ascend's NPU kernels
use each rank's own slice maximum instead.
"""

from __future__ import annotations

import torch

from vllm_modelslim.kernels import ScaledInt8MMKernel, make_scaled_int8_mm, quantize_dynamic_per_token
from vllm_modelslim.kernels.activation_quantizers import ActivationQuantKernel, make_activation_quant
from vllm_modelslim.kernels.dynamic_int8_linear import DynamicInt8LinearKernel, make_dynamic_int8_linear
from vllm_modelslim.schemes.base import apply_2d


def make_dynamic_quantizer(
    layer: torch.nn.Module, device: torch.device, bits: int, label: str
) -> ActivationQuantKernel:
    """The layer's dynamic per-token quantizer, with the layer's ``modelslim_row_max_reduce`` when it has one.

    Args:
        layer: the linear layer (or expert projection); the plugin sets
            ``modelslim_row_max_reduce`` on row-parallel layers when tp > 1 only.
        device: where the activations will be.
        bits: 8 or 4.
        label: what the layer is, for the kernel selection log line.
    """
    reduce = getattr(layer, "modelslim_row_max_reduce", None)
    return make_activation_quant(device, bits=bits, label=label, row_max_reduce=reduce)


def build_dynamic_kernels(
    layer: torch.nn.Module,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    label: str,
    bits: int = 8,
    weight_bits: int = 8,
) -> None:
    """Set the layer's kernels for per-token ``bits``-bit activations × an int8 (or int4-valued) weight.

    With per-channel scales, one fused kernel (quantization and GEMM in one
    call, :mod:`~vllm_modelslim.kernels.dynamic_int8_linear`) where one fits the
    layer and platform: ``layer.modelslim_kernel`` is it and
    ``modelslim_act_quant`` None. Otherwise a scaled int8 GEMM and the layer's
    dynamic quantizer (:func:`make_dynamic_quantizer`).

    Args:
        layer: the linear layer or expert projection (``modelslim_params_dtype``,
            optional ``modelslim_row_max_reduce``).
        weight: int8 (or int4-valued) ``[N, K]``.
        weight_scale: float32 per channel ``[N]`` or per channel and K-group ``[N, G]``.
        label: the scheme's quant type, for the kernel selection log lines.
        bits: activation bits, 8 or 4.
        weight_bits: 8, or 4 when the weight holds int4 values (W4A8, W4A4: an int4 kernel may
            keep them as int4).
    """
    dtype = layer.modelslim_params_dtype
    if weight_scale.dim() == 1:
        row_max = getattr(layer, "modelslim_row_max_reduce", None) is not None
        fused = make_dynamic_int8_linear(
            weight,
            weight_scale,
            dtype,
            rank_row_max=row_max,
            label=label,
            weight_bits=weight_bits,
            activation_bits=bits,
        )
        if fused is not None:
            layer.modelslim_kernel, layer.modelslim_act_quant = fused, None
            return
    layer.modelslim_kernel = make_scaled_int8_mm(weight, weight_scale, label=label, out_dtype=dtype)
    layer.modelslim_act_quant = make_dynamic_quantizer(layer, weight.device, bits=bits, label=label)


def apply_dynamic(
    kernel: ScaledInt8MMKernel | DynamicInt8LinearKernel,
    x: torch.Tensor,
    bias: torch.Tensor | None,
    bits: int = 8,
    quantizer: ActivationQuantKernel | None = None,
) -> torch.Tensor:
    """Quantize ``x`` ``[..., K]`` per token to ``bits``-bit integers and run ``kernel``.

    ``quantizer`` is the layer's chosen activation quantizer (``make_activation_quant``);
    without one, the torch function ``quantize_dynamic_per_token``. A fused
    :class:`DynamicInt8LinearKernel` quantizes by itself (to the bits it was built for).

    Returns ``[..., N]`` in ``x.dtype``.
    """
    if isinstance(kernel, DynamicInt8LinearKernel):
        return apply_2d(x, lambda x2d: kernel(x2d, bias))

    def forward(x2d: torch.Tensor) -> torch.Tensor:
        if quantizer is not None:
            x_q, x_scale = quantizer(x2d)
        else:
            x_q, x_scale = quantize_dynamic_per_token(x2d, bits=bits)
        return kernel(x_q, x_scale, bias, x.dtype)

    return apply_2d(x, forward)
