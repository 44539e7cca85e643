"""The forward shared by the dynamic-activation schemes (W8A8_DYNAMIC, W4A8_DYNAMIC, W4A4_DYNAMIC)."""

from __future__ import annotations

import torch

from vllm_modelslim.kernels import ScaledInt8MMKernel, quantize_dynamic_per_token
from vllm_modelslim.kernels.activation_quantizers import ActivationQuantKernel
from vllm_modelslim.schemes.base import apply_2d


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
