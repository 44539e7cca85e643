"""``W8A8_MIX`` (PD-mix) linear: static W8A8 on a KV-consumer (decode) instance, dynamic otherwise.

vLLM Ascend's ``AscendW8A8PDMixLinearMethod`` (spec §4.8): the checkpoint has
the static W8A8 tensors (``weight``, ``quant_bias``, ``input_scale``,
``input_offset``, ``deq_scale``) plus ``weight_scale``/``weight_offset``
``[o, 1]``. On an instance whose vLLM ``kv_transfer_config`` makes it a KV
consumer (the decode side of prefill/decode disaggregation) the static math
of ``W8A8`` runs; everywhere else (prefill instances, colocated serving) the
dynamic per-token math of ``W8A8_DYNAMIC`` runs on the same int8 weight,
with ``weight_scale`` and the layer's float bias. The choice is made once,
when the model is built.
"""

from __future__ import annotations

import torch

from vllm_modelslim.schemes.base import LayerContext, LinearScheme
from vllm_modelslim.schemes.linear.checkpoint_tensors import WEIGHT_SCALE
from vllm_modelslim.schemes.linear.w8a8 import W8A8StaticLinearScheme
from vllm_modelslim.schemes.linear.w8a8_dynamic import W8A8DynamicLinearScheme
from vllm_modelslim.schemes.registry import register_scheme


@register_scheme("W8A8_MIX", "linear")
class W8A8MixLinearScheme(LinearScheme):
    """PD-mix W8A8: static math on decode (KV-consumer) instances, dynamic elsewhere."""

    quant_type = "W8A8_MIX"

    def __init__(self, context: LayerContext):
        super().__init__(context)
        self.static = W8A8StaticLinearScheme(context)
        self.dynamic = W8A8DynamicLinearScheme(context)
        self.kv_consumer = context.kv_consumer  # decided by the plugin from vLLM's kv_transfer_config

    def checkpoint_tensors(self):
        # The static set, with weight_scale required (the dynamic math needs it).
        static = self.static.checkpoint_tensors()
        return tuple(WEIGHT_SCALE if spec.suffix == WEIGHT_SCALE.suffix else spec for spec in static)

    def active(self, layer: torch.nn.Module) -> LinearScheme:
        """The scheme whose math this instance runs."""
        return self.static if self.kv_consumer else self.dynamic

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        self.active(layer).process_weights_after_loading(layer)

    def apply(self, layer, x, bias):
        return self.active(layer).apply(layer, x, bias)
