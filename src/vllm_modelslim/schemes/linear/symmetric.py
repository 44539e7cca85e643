"""Checks shared by the integer-activation schemes on weight values (int4 range).

Zero weight offsets (symmetric weights) are declared as a value rule
(``SYMMETRIC_WEIGHT_OFFSET``) and checked with the other parameters.
"""

from __future__ import annotations

import torch

from vllm_modelslim.format.errors import CheckpointTensorError
from vllm_modelslim.kernels.int4_packing import INT4_MAX, INT4_MIN
from vllm_modelslim.schemes.base import LinearScheme


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
