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
    kronecker_transform,
    quantize_dynamic_per_token_reference,
    quantize_static_per_tensor_reference,
    scaled_int8_mm_reference,
    weight_only_int4_reference,
    weight_only_int8_reference,
)
from vllm_modelslim.kernels.int4_packing import unpack_int4_from_int32, unpack_int4_pairs
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


def _int4_weight(t: Tensors) -> torch.Tensor:
    """Unpacked int4 weight ``[N, K]``: pairs along N (``[N/2, K]``), int32 words, or one per byte."""
    if "weight_packed" in t:
        return unpack_int4_from_int32(t["weight_packed"], dim=1, size=int(t["weight_shape"][1]))
    weight, rows = t["weight"], t["weight_scale"].shape[0]
    return unpack_int4_pairs(weight, dim=0) if 2 * weight.shape[0] == rows else weight


def _w4a16(x: torch.Tensor, t: Tensors, bias: torch.Tensor | None) -> torch.Tensor:
    return weight_only_int4_reference(
        x, _int4_weight(t), t["weight_scale"], t.get("weight_offset"), bias, torch.float64
    )


def _w4a8_dynamic(x: torch.Tensor, t: Tensors, bias: torch.Tensor | None) -> torch.Tensor:
    scale = t["weight_scale"].to(torch.float64).reshape(-1, 1)
    if "weight_scale_second" in t:
        scale = scale * t["weight_scale_second"].to(torch.float64)
    x_q, x_scale = quantize_dynamic_per_token_reference(x)
    return scaled_int8_mm_reference(
        x_q, x_scale, _int4_weight(t), scale.squeeze(1) if scale.shape[1] == 1 else scale, None, bias
    )


def _w4a4_dynamic(x: torch.Tensor, t: Tensors, bias: torch.Tensor | None) -> torch.Tensor:
    x_q, x_scale = quantize_dynamic_per_token_reference(x, bits=4)
    return scaled_int8_mm_reference(x_q, x_scale, t["weight"], _flat(t["weight_scale"]), None, bias)


def _w4a4_flatquant(x: torch.Tensor, t: Tensors, bias: torch.Tensor | None) -> torch.Tensor:
    transformed = kronecker_transform(x, t["left_trans"], t.get("right_trans"))
    x_q, x_scale = quantize_dynamic_per_token_reference(
        transformed, bits=4, clip_ratio=float(t["clip_ratio"].item())
    )
    return scaled_int8_mm_reference(x_q, x_scale, t["weight"], _flat(t["weight_scale"]), None, bias)


REFERENCE_LINEAR_MATH: dict[str, Callable[[torch.Tensor, Tensors, torch.Tensor | None], torch.Tensor]] = {
    "W8A8_DYNAMIC": _w8a8_dynamic,
    "W8A8": _w8a8_static,
    "W8A16": _w8a16,
    "W4A16": _w4a16,
    "W4A8_DYNAMIC": _w4a8_dynamic,
    "W4A4_DYNAMIC": _w4a4_dynamic,
    "W4A4_FLATQUANT_DYNAMIC": _w4a4_flatquant,
    "W8A8_MIX": _w8a8_dynamic,  # colocated / prefill instances; see KV_CONSUMER_MATH
}
"""Quant type → ``f(x [M, K], tensors, bias) -> y [M, N]`` (float64)."""

KV_CONSUMER_MATH = {**REFERENCE_LINEAR_MATH, "W8A8_MIX": _w8a8_static}
"""The same on a KV-consumer (decode) instance of prefill/decode disaggregation (spec §4.8)."""


class ReferenceQuantizedLinear(torch.nn.Module):
    """``nn.Linear`` stand-in computing a ModelSlim quant type's math in float64.

    Args:
        quant_type: e.g. ``"W8A8_DYNAMIC"``.
        tensors: the layer's checkpoint tensors by suffix (``weight``, ``weight_scale``, ...).
        bias: float bias ``[N]`` from the checkpoint, if any.
        kv_consumer: compute as a KV-consumer (decode) instance (W8A8_MIX static math).

    Under tensor parallelism the plugin's row-parallel layers add up to this
    unsplit math (dynamic scales span all ranks' K-slices), so one reference
    serves every tensor-parallel size.

    Raises:
        NotImplementedError: no reference math for ``quant_type``.
    """

    def __init__(
        self,
        quant_type: str,
        tensors: Tensors,
        bias: torch.Tensor | None = None,
        kv_consumer: bool = False,
    ):
        super().__init__()
        table = KV_CONSUMER_MATH if kv_consumer else REFERENCE_LINEAR_MATH
        if quant_type not in table:
            raise NotImplementedError(f"no reference math for quant type {quant_type!r}")
        self.quant_type = quant_type
        self.math = table[quant_type]
        self.tensors = dict(tensors)
        self.ref_bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leading = x.shape[:-1]
        x2d = x.reshape(-1, x.shape[-1])
        y = self.math(x2d, self.tensors, self.ref_bias)
        return y.to(x.dtype).reshape(*leading, -1)
