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

from vllm_modelslim.kernels import ScaledInt8MMKernel, quantize_dynamic_per_token
from vllm_modelslim.kernels.activation_quantizers import ActivationQuantKernel, make_activation_quant
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


def apply_dynamic(
    kernel: ScaledInt8MMKernel,
    x: torch.Tensor,
    bias: torch.Tensor | None,
    bits: int = 8,
    quantizer: ActivationQuantKernel | None = None,
) -> torch.Tensor:
    """Quantize ``x`` ``[..., K]`` per token to ``bits``-bit integers and run ``kernel``.

    ``quantizer`` is the layer's chosen activation quantizer (``make_activation_quant``);
    without one, the torch function ``quantize_dynamic_per_token``.

    Returns ``[..., N]`` in ``x.dtype``.
    """

    def forward(x2d: torch.Tensor) -> torch.Tensor:
        if quantizer is not None:
            x_q, x_scale = quantizer(x2d)
        else:
            x_q, x_scale = quantize_dynamic_per_token(x2d, bits=bits)
        return kernel(x_q, x_scale, bias, x.dtype)

    return apply_2d(x, forward)
