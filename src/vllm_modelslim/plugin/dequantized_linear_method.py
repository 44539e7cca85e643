"""A quantized linear layer served with its dequantized float weight (MLA's ``kv_b_proj``).

vLLM's MLA attention reads ``kv_b_proj``'s weight itself: after loading it
splits the dequantized weight into ``W_UK``/``W_UV`` and absorbs them into the
query and the output for decode (``split_kv_b_proj``, which for any quant
method other than its own runs the layer on an identity matrix); prefill calls
the layer on the latent. vllm-ascend does the same (decode on the dequantized
weight). Running the identity through a quantized layer is exact only for
per-token dynamic activations (W8A8 static would quantize the 1.0s with the
calibrated input scale), and prefill through the integer kernel would differ
from the absorbed decode. So this method loads and checks the checkpoint's
tensors with the layer's scheme, then replaces them by one float weight
``W = (q − offset)·scale`` (per output channel, spec §4.1/§4.3) in the model
dtype: prefill and decode then use the same weight, and vLLM's identity
read-back returns it exactly. The layer is small (``heads·(nope+v) × kv_lora_rank``).
"""

from __future__ import annotations

import torch
from vllm.logger import init_logger
from vllm.model_executor.layers.linear import (
    LinearMethodBase,
    register_weight_loader_v2_supported_method,
)

from vllm_modelslim.plugin.linear_method import ModelSlimLinearMethod, free_checkpoint_weights

logger = init_logger(__name__)

DEQUANTIZABLE_TYPES = frozenset({"W8A8_DYNAMIC", "W8A8_MIX", "W8A16"})
"""Quant types whose stored weight is int8 ``[N, K]`` with ``weight_scale``/``weight_offset`` ``[N, 1]``."""

DEQUANTIZED_LAYER_NAMES = frozenset({"kv_b_proj"})
"""Layers whose float weight vLLM reads directly (MLA's latent up-projection)."""


@register_weight_loader_v2_supported_method
class DequantizedLinearMethod(LinearMethodBase):
    """Loads a layer like :class:`ModelSlimLinearMethod`, then serves ``(q − offset)·scale`` in float.

    Args:
        inner: the layer's ModelSlim method (its scheme creates, loads and checks the tensors).
        prefix: the layer's name, for the log line.
    """

    def __init__(self, inner: ModelSlimLinearMethod, prefix: str):
        super().__init__()
        self.inner = inner
        self.prefix = prefix

    def create_weights(self, layer: torch.nn.Module, *args, **kwargs) -> None:
        self.inner.create_weights(layer, *args, **kwargs)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        scheme = self.inner.scheme
        if self.inner.after_loading is not None:
            self.inner.after_loading()
        scheme.check_values(layer)
        weight = layer.weight.data.to(torch.float32)
        scale = scheme.float_param(layer, "weight_scale").reshape(-1, 1)
        offset = getattr(layer, "weight_offset", None)
        zero = offset.data.to(torch.float32).reshape(-1, 1) if offset is not None else 0.0
        dequantized = ((weight - zero) * scale).to(layer.modelslim_params_dtype)
        free_checkpoint_weights(layer)
        for name in [n for n, _ in layer.named_parameters(recurse=False)]:
            delattr(layer, name)
        layer.weight = torch.nn.Parameter(dequantized, requires_grad=False)
        logger.info(
            "%s (%s): dequantized to %s at load; vLLM's MLA reads this layer's float weight",
            self.prefix,
            scheme.quant_type,
            dequantized.dtype,
        )

    def apply(
        self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        return torch.nn.functional.linear(x, layer.weight, bias)
