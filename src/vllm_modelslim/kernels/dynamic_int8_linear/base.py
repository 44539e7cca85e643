"""Interface of the dynamic int8 linear layer: per-token quantization of ``x`` and the int8 GEMM in one call.

The math is W8A8_DYNAMIC's (spec §4.2; W4A8_DYNAMIC and W4A4_DYNAMIC per
channel the same with int4 weights, and for W4A4 ``qmax`` = 7)::

    s_x[m] = max_k |x[m, k]| / qmax,   x_q = round(x / s_x)
    y[m, n] = (Σ_k x_q[m, k] · W_q[n, k]) · s_x[m] · s_w[n] (+ bias[n])

which the dynamic schemes otherwise compute with two kernels, an activation
quantizer (:mod:`~vllm_modelslim.kernels.activation_quantizers`) and a scaled
int8 GEMM (:mod:`~vllm_modelslim.kernels.scaled_int8_mm`): the reference
:class:`QuantizerAndGemm`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm_modelslim.kernels.base import QuantKernel


@dataclass(frozen=True)
class DynamicInt8LinearConfig:
    """What a dynamic int8 linear layer asks of a fused kernel.

    Attributes:
        device_type: where the activations live.
        activation_dtype: the layer's activation dtype.
        in_features: K.
        out_features: N (this rank's).
        rank_row_max: the per-token scales span tensor-parallel ranks (row-parallel layer, tp > 1).
        weight_bits: 8 (int8 weight values) or 4 (values in [−8, 7], held one per int8).
        activation_bits: 8 (``qmax`` = 127) or 4 (``qmax`` = 7, W4A4_DYNAMIC).
    """

    device_type: str
    activation_dtype: torch.dtype
    in_features: int
    out_features: int
    rank_row_max: bool = False
    weight_bits: int = 8
    activation_bits: int = 8


class DynamicInt8LinearKernel(QuantKernel):
    """``forward(x [M, K], bias [N] | None) -> [M, N]`` in ``x.dtype``."""


class QuantizerAndGemm(DynamicInt8LinearKernel):
    """The reference: an activation quantizer kernel and a scaled int8 GEMM kernel (never built here).

    Choosing it leaves the scheme on its two-kernel path, which runs every configuration.
    """

    name = "quantizer_and_gemm"
