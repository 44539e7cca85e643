"""Checks shared by the integer-activation schemes: symmetric weights, int4 value range."""

from __future__ import annotations

import torch

from vllm_modelslim.format.errors import CheckpointTensorError, InvalidScaleError
from vllm_modelslim.kernels.int4_packing import INT4_MAX, INT4_MIN
from vllm_modelslim.schemes.base import LinearScheme


def require_zero_weight_offset(
    scheme: LinearScheme, layer: torch.nn.Module, suffix: str = "weight_offset"
) -> None:
    """Raise unless ``layer.<suffix>`` (if registered) is all zeros.

    vllm-ascend ignores ``weight_offset`` in its W8A8/W8A8_DYNAMIC/W4A8/W4A4
    schemes, which silently computes a wrong product for asymmetric weights;
    msmodelslim writes zeros for these schemes, and anything else is refused.

    Raises:
        InvalidScaleError: some offset is non-zero (message names layer and file).
    """
    offset = getattr(layer, suffix, None)
    if offset is not None and bool(torch.any(offset.data != 0)):
        raise InvalidScaleError(
            f"{scheme.quant_type} with asymmetric weights (non-zero {suffix}, e.g. "
            f"{offset.data[offset.data != 0][0].item()!r}) is not supported: integer activations "
            "times integer weights assume symmetric weights, which is what msmodelslim writes",
            file=scheme.error_file(suffix),
            layer=scheme.context.prefix,
        )


def require_int4_values(scheme: LinearScheme, values: torch.Tensor, suffix: str = "weight") -> torch.Tensor:
    """Return ``values`` after checking they fit in int4 ([−8, 7]).

    Raises:
        CheckpointTensorError: a value lies outside the int4 range.
    """
    low, high = int(values.min()), int(values.max())
    if low < INT4_MIN or high > INT4_MAX:
        raise CheckpointTensorError(
            f"{scheme.quant_type} stores one int4 value per int8, but {suffix} holds values in "
            f"[{low}, {high}] (int4 is [{INT4_MIN}, {INT4_MAX}]); the checkpoint is not {scheme.quant_type}",
            file=scheme.error_file(suffix),
            layer=scheme.context.prefix,
        )
    return values
