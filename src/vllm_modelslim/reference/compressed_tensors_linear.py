"""Pure-torch linear layers of an LLM-Compressor (compressed-tensors) checkpoint, the oracle of its tests.

Built straight from the layer's stored tensors and its ``config_groups``
arguments (compressed-tensors ``QuantizationArgs``), with the kernels'
float64 reference functions; independent of vLLM. Math (compressed-tensors'
definitions, symmetric int)::

    int-quantized W8A8:  y = s_x · s_w · (x_q · W_qᵀ) + bias
        dynamic per-token  s_x[m] = max_k |x[m, k]| / 127, x_q = round(x / s_x)
        static per-tensor  s_x = input_scale, x_q = clamp(round(x · (1/s_x)), −128, 127)
    pack-quantized wNa16:  W = (u − 2^(bits−1)) · s  with u the unsigned stored values
        (int32 words, LSB first along the input dim; scales per channel or per group)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from vllm_modelslim.kernels import (
    quantize_dynamic_per_token_reference,
    quantize_static_per_tensor_reference,
    scaled_int8_mm_reference,
)
from vllm_modelslim.kernels.weight_only.reference import weight_only_reference


def unpack_pack_quantized(packed: torch.Tensor, bits: int, in_features: int) -> torch.Tensor:
    """Signed values ``[N, K]`` (int16) of a ``pack-quantized`` int32 weight ``[N, K·bits/32]``.

    Each word holds ``32/bits`` values, least significant first, stored
    unsigned with an offset of ``2^(bits−1)``.

    Raises:
        ValueError: ``packed`` is not int32 or ``bits`` is not 4 or 8.
    """
    if packed.dtype != torch.int32 or bits not in (4, 8):
        raise ValueError(
            f"pack-quantized weights are int32 words of 4- or 8-bit values, got {packed.dtype}/{bits}"
        )
    per_word = 32 // bits
    shifts = torch.arange(per_word, dtype=torch.int64) * bits
    words = packed.to(torch.int64) & 0xFFFFFFFF
    values = (words.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)  # [N, W, per_word]
    return (values.flatten(1)[:, :in_features] - (1 << (bits - 1))).to(torch.int16)


class ReferenceCompressedTensorsLinear(torch.nn.Module):
    """One compressed-tensors quantized linear layer in float64 reference math.

    Args:
        tensors: the layer's stored tensors by suffix (``weight`` / ``weight_packed``,
            ``weight_scale``, ``weight_shape``, ``input_scale``).
        weights: the weight ``QuantizationArgs`` as a dict (``num_bits``, ``strategy``, ``symmetric``).
        input_activations: the activation ``QuantizationArgs`` dict, or None (weight-only).
        bias: float bias ``[N]`` or None.

    Raises:
        NotImplementedError: asymmetric quantization, float types, or activation
            strategies other than per-token dynamic / per-tensor static.
    """

    def __init__(
        self,
        tensors: Mapping[str, torch.Tensor],
        weights: Mapping[str, Any],
        input_activations: Mapping[str, Any] | None,
        bias: torch.Tensor | None = None,
    ):
        super().__init__()
        for args in (weights, input_activations):
            if args is not None and (not args.get("symmetric", True) or args.get("type", "int") != "int"):
                raise NotImplementedError(f"no reference for compressed-tensors args {dict(args)}")
        self.scale = tensors["weight_scale"].to(torch.float64)
        if "weight_packed" in tensors:
            in_features = int(tensors["weight_shape"][1])
            self.weight = unpack_pack_quantized(tensors["weight_packed"], weights["num_bits"], in_features)
        else:
            self.weight = tensors["weight"]
        self.activations = input_activations
        self.input_scale = tensors.get("input_scale")
        if input_activations is not None and input_activations["strategy"] not in ("token", "tensor"):
            raise NotImplementedError(f"activation strategy {input_activations['strategy']!r}")
        self.ref_bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leading = x.shape[:-1]
        x2d = x.reshape(-1, x.shape[-1])
        if self.activations is None:
            y = weight_only_reference(x2d, self.weight, self.scale, None, self.ref_bias, torch.float64)
        else:
            if self.activations["strategy"] == "token":
                x_q, x_scale = quantize_dynamic_per_token_reference(x2d)
                scale = self.scale.reshape(-1)
            else:
                input_scale = float(self.input_scale.float().item())
                x_q, x_scale = quantize_static_per_tensor_reference(x2d, input_scale, 0.0), None
                scale = self.scale.reshape(-1) * input_scale
            y = scaled_int8_mm_reference(x_q, x_scale, self.weight.to(torch.int8), scale, None, self.ref_bias)
        return y.to(x.dtype).reshape(*leading, -1)
