"""The int8 × int8 schemes assume symmetric weights: refuse a non-zero ``weight_offset``."""

from __future__ import annotations

import torch

from vllm_modelslim.format.errors import InvalidScaleError
from vllm_modelslim.schemes.base import LinearScheme


def require_zero_weight_offset(scheme: LinearScheme, layer: torch.nn.Module) -> None:
    """Raise unless ``layer.weight_offset`` (if registered) is all zeros.

    vllm-ascend ignores ``weight_offset`` in its W8A8/W8A8_DYNAMIC schemes,
    which silently computes a wrong product for asymmetric weights; msmodelslim
    writes zeros for these schemes, and anything else is refused here.

    Raises:
        InvalidScaleError: some offset is non-zero (message names layer and file).
    """
    offset = getattr(layer, "weight_offset", None)
    if offset is not None and bool(torch.any(offset.data != 0)):
        raise InvalidScaleError(
            f"{scheme.quant_type} with asymmetric weights (non-zero weight_offset, e.g. "
            f"{offset.data[offset.data != 0][0].item()!r}) is not supported: int8 activations "
            "times int8 weights assume symmetric weights, which is what msmodelslim writes",
            file=scheme.context.files_of("weight_offset"),
            layer=scheme.context.prefix,
        )
