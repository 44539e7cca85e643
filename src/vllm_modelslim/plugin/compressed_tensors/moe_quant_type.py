"""Which ModelSlim MoE scheme computes a compressed-tensors experts layer (spec §6 detection rules)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def moe_quant_type(scheme_dict: Mapping[str, Any] | None) -> str | None:
    """The ModelSlim quant type whose MoE scheme computes these experts, or None.

    ``scheme_dict`` is vLLM's ``CompressedTensorsConfig.get_scheme_dict`` entry of
    the experts' ``gate_proj`` (``weights`` / ``input_activations``
    ``QuantizationArgs``, ``format``). The mapping follows vllm-ascend's
    compressed-tensors detection (spec §6):

    * int8 per-channel static weights × int8 per-token dynamic activations,
      both symmetric → ``"W8A8_DYNAMIC"`` (same tensors, minus the all-zero
      ``weight_offset`` that msmodelslim also writes);
    * int4 per-group or per-channel static symmetric weights, no activation
      quantization, ``pack-quantized`` → ``"W4A16"`` (its pack-quantized layout).

    Anything else returns None and stays with vLLM's own MoE methods.
    """
    if not scheme_dict:
        return None
    weights, activations = scheme_dict.get("weights"), scheme_dict.get("input_activations")
    if weights is None or weights.type != "int" or not weights.symmetric or weights.dynamic:
        return None
    if activations is None:
        four_bit = weights.num_bits == 4 and weights.strategy in ("group", "channel")
        return "W4A16" if four_bit and scheme_dict.get("format") == "pack-quantized" else None
    per_token_int8 = (
        activations.type == "int"
        and activations.num_bits == 8
        and activations.strategy == "token"
        and activations.dynamic is True
        and activations.symmetric
    )
    return (
        "W8A8_DYNAMIC" if per_token_int8 and weights.num_bits == 8 and weights.strategy == "channel" else None
    )
