"""Checks on loaded quantization parameters (values, not shapes).

Run after the weights are loaded and before they are turned into kernel layout,
so that a broken checkpoint fails at load time with the layer and file named,
never with NaNs in the output.
"""

from __future__ import annotations

import torch

from vllm_modelslim.format.errors import InvalidScaleError


def check_positive_finite(values: torch.Tensor, *, what: str, layer: str, file: str | None) -> None:
    """Raise :class:`InvalidScaleError` unless every value is finite and > 0.

    Args:
        values: the loaded scales (any float shape).
        what: tensor name for the message, e.g. ``"weight_scale"``.
        layer: vLLM layer prefix; file: checkpoint file(s) holding the tensor.
    """
    v = values.detach().to(torch.float64)
    bad = ~torch.isfinite(v) | (v <= 0)
    if bool(bad.any()):
        flat = v.reshape(-1)
        index = int(bad.reshape(-1).nonzero()[0])
        kind = (
            "NaN"
            if torch.isnan(flat[index])
            else "inf"
            if torch.isinf(flat[index])
            else ("zero" if flat[index] == 0 else "negative")
        )
        raise InvalidScaleError(
            f"{what} has {int(bad.sum())} invalid value(s) (first: {kind} {flat[index].item()!r} at "
            f"flat index {index}); scales must be finite and > 0",
            file=file,
            layer=layer,
        )


def check_integer_range(
    values: torch.Tensor, low: int, high: int, *, what: str, layer: str, file: str | None
) -> None:
    """Raise :class:`InvalidScaleError` unless every value is an integer in ``[low, high]``."""
    v = values.detach().to(torch.float64)
    bad = ~torch.isfinite(v) | (v != torch.round(v)) | (v < low) | (v > high)
    if bool(bad.any()):
        flat = v.reshape(-1)
        index = int(bad.reshape(-1).nonzero()[0])
        raise InvalidScaleError(
            f"{what} must hold integers in [{low}, {high}], found {flat[index].item()!r} "
            f"at flat index {index}",
            file=file,
            layer=layer,
        )


def check_finite(values: torch.Tensor, *, what: str, layer: str, file: str | None) -> None:
    """Raise :class:`InvalidScaleError` when any value is NaN or inf."""
    v = values.detach()
    if v.is_floating_point() and not bool(torch.isfinite(v).all()):
        raise InvalidScaleError(f"{what} contains NaN or inf values", file=file, layer=layer)
