"""The MoE schemes: each quant type's experts run its linear scheme per projection.

Per expert ``e`` and token row ``x`` (spec §4.2 for W8A8_DYNAMIC; the same
structure for every type, with each projection computing its linear scheme's
math)::

    C = w13_e(x)                       [2I]  gate rows then up rows
    S = silu(C[:I]) · C[I:]            [I]
    D = w2_e(S)                        [H]   (dynamic schemes quantize S per token again)
    out = Σ_j topk_weight_j · D_{expert j}

On-disk layouts are those of the linear schemes (``experts.<e>.<proj>.<suffix>``):

* ``W8A8_DYNAMIC``: int8 ``weight`` [o, i], ``weight_scale``/``weight_offset`` [o, 1].
* ``W8A8`` (static; msmodelslim's ``moe_w8a8c8``-style configs quantize experts
  this way, vllm-ascend has no scheme for it): ``weight``, ``quant_bias``,
  ``input_scale``, ``input_offset``, ``deq_scale`` per projection. Under tensor
  parallelism each rank's down_proj sees a K-slice; ``quant_bias`` (which folds
  ``−input_offset·Σ_k W_q`` over the full K) enters on MoE rank 0 only, and the
  sum of the ranks' partial outputs restores every column's full correction.
* ``W8A8_MIX``: the static set plus ``weight_scale``; static math on KV-consumer
  instances, dynamic elsewhere (vllm-ascend removed its MoE variant).
* ``W8A16``: weight-only int8 with zero points (vllm-ascend has no MoE scheme).
* ``W4A16``: msmodelslim's per-group layout (two int4 per int8 along the output
  dim, ``w = (q − offset)·scale``) or LLM-Compressor's ``pack-quantized`` int32.
* ``W4A8_DYNAMIC``: per-channel (``version`` "1.0.0" packed, with ``scale_bias``),
  per-group (``weight_scale_second``), and the legacy ``version`` "0" layout with
  one int4 per byte; the exact int8×int4 product, ``scale_bias`` unused (§4.5).
"""

from __future__ import annotations

from vllm_modelslim.schemes.linear.w4a8_dynamic import W4A8DynamicLinearScheme
from vllm_modelslim.schemes.linear.w4a16 import W4A16LinearScheme
from vllm_modelslim.schemes.linear.w8a8 import W8A8StaticLinearScheme
from vllm_modelslim.schemes.linear.w8a8_dynamic import W8A8DynamicLinearScheme
from vllm_modelslim.schemes.linear.w8a8_mix import W8A8MixLinearScheme
from vllm_modelslim.schemes.linear.w8a16 import W8A16LinearScheme
from vllm_modelslim.schemes.moe.base import MoEScheme
from vllm_modelslim.schemes.registry import register_scheme


@register_scheme("W8A8_DYNAMIC", "moe")
class W8A8DynamicMoEScheme(MoEScheme):
    """Per-token int8 activations × per-channel int8 experts."""

    quant_type = "W8A8_DYNAMIC"
    projection_scheme = W8A8DynamicLinearScheme


@register_scheme("W8A8", "moe")
class W8A8StaticMoEScheme(MoEScheme):
    """Static per-tensor int8 activations × per-channel int8 experts."""

    quant_type = "W8A8"
    projection_scheme = W8A8StaticLinearScheme


@register_scheme("W8A8_MIX", "moe")
class W8A8MixMoEScheme(MoEScheme):
    """PD-mix experts: static math on KV-consumer instances, dynamic elsewhere."""

    quant_type = "W8A8_MIX"
    projection_scheme = W8A8MixLinearScheme


@register_scheme("W8A16", "moe")
class W8A16MoEScheme(MoEScheme):
    """Weight-only int8 experts."""

    quant_type = "W8A16"
    projection_scheme = W8A16LinearScheme


@register_scheme("W4A16", "moe")
class W4A16MoEScheme(MoEScheme):
    """Weight-only int4 experts with per-group scales (ModelSlim or pack-quantized layout)."""

    quant_type = "W4A16"
    projection_scheme = W4A16LinearScheme


@register_scheme("W4A8_DYNAMIC", "moe")
class W4A8DynamicMoEScheme(MoEScheme):
    """Per-token int8 activations × int4 experts, per-channel or per-group."""

    quant_type = "W4A8_DYNAMIC"
    projection_scheme = W4A8DynamicLinearScheme
