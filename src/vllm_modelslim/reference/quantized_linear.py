"""A pure-torch quantized linear layer built straight from checkpoint tensors.

It computes ModelSlim's math for one layer with the kernels' float64
reference functions, independently of vLLM (no parameter classes, no fused
shards, no kernel selection), so that it can serve as the oracle for the
whole vLLM path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from vllm_modelslim.kernels import (
    quantize_dynamic_per_token_reference,
    quantize_static_per_tensor_reference,
    scaled_int8_mm_reference,
    weight_only_int8_reference,
)
from vllm_modelslim.schemes.linear.checkpoint_tensors import fp32_from_int64_bits

Tensors = Mapping[str, torch.Tensor]


def _flat(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.reshape(-1)


def _w8a8_dynamic(x: torch.Tensor, t: Tensors, bias: torch.Tensor | None) -> torch.Tensor:
    x_q, x_scale = quantize_dynamic_per_token_reference(x)
    return scaled_int8_mm_reference(x_q, x_scale, t["weight"], _flat(t["weight_scale"]), None, bias)


def _w8a8_static(x: torch.Tensor, t: Tensors, bias: torch.Tensor | None) -> torch.Tensor:
    # ModelSlim folds the float bias into quant_bias (ERRATA 2): ``bias`` is not added.
    x_q = quantize_static_per_tensor_reference(
        x, float(t["input_scale"].item()), float(t["input_offset"].item())
    )
    deq_scale = fp32_from_int64_bits(t["deq_scale"]).reshape(-1)
    return scaled_int8_mm_reference(x_q, None, t["weight"], deq_scale, t["quant_bias"].reshape(-1))


def _w8a16(x: torch.Tensor, t: Tensors, bias: torch.Tensor | None) -> torch.Tensor:
    return weight_only_int8_reference(
        x, t["weight"], _flat(t["weight_scale"]), _flat(t.get("weight_offset")), bias, torch.float64
    )


REFERENCE_LINEAR_MATH: dict[str, Callable[[torch.Tensor, Tensors, torch.Tensor | None], torch.Tensor]] = {
    "W8A8_DYNAMIC": _w8a8_dynamic,
    "W8A8": _w8a8_static,
    "W8A16": _w8a16,
}
"""Quant type → ``f(x [M, K], tensors, bias) -> y [M, N]`` (float64)."""


class ReferenceQuantizedLinear(torch.nn.Module):
    """``nn.Linear`` stand-in computing a ModelSlim quant type's math in float64.

    Args:
        quant_type: e.g. ``"W8A8_DYNAMIC"``.
        tensors: the layer's checkpoint tensors by suffix (``weight``, ``weight_scale``, ...).
        bias: float bias ``[N]`` from the checkpoint, if any.

    Raises:
        NotImplementedError: no reference math for ``quant_type``.
    """

    def __init__(self, quant_type: str, tensors: Tensors, bias: torch.Tensor | None = None):
        super().__init__()
        if quant_type not in REFERENCE_LINEAR_MATH:
            raise NotImplementedError(f"no reference math for quant type {quant_type!r}")
        self.quant_type = quant_type
        self.math = REFERENCE_LINEAR_MATH[quant_type]
        self.tensors = dict(tensors)
        self.ref_bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leading = x.shape[:-1]
        y = self.math(x.reshape(-1, x.shape[-1]), self.tensors, self.ref_bias)
        return y.to(x.dtype).reshape(*leading, -1)
