"""Checks on loaded quantization parameters (values, not shapes).

Run after the weights are loaded and before they are turned into kernel layout,
so that a broken checkpoint fails at load time with the layer and file named,
never with NaNs in the output.
"""

from __future__ import annotations

import math
from enum import Enum

import torch

from vllm_modelslim.format.errors import InvalidScaleError


def _first_bad(values: torch.Tensor, bad: torch.Tensor) -> tuple[int, float]:
    """Flat index and value of the first element flagged in ``bad`` (same shape as ``values``)."""
    index = int(bad.reshape(-1).nonzero()[0])
    return index, values.reshape(-1)[index].item()


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
        index, first = _first_bad(v, bad)
        kind = (
            "NaN"
            if math.isnan(first)
            else "inf"
            if math.isinf(first)
            else ("zero" if first == 0 else "negative")
        )
        raise InvalidScaleError(
            f"{what} has {int(bad.sum())} invalid value(s) (first: {kind} {first!r} at "
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
        index, first = _first_bad(v, bad)
        raise InvalidScaleError(
            f"{what} must hold integers in [{low}, {high}], found {first!r} at flat index {index}",
            file=file,
            layer=layer,
        )


def check_finite(values: torch.Tensor, *, what: str, layer: str, file: str | None) -> None:
    """Raise :class:`InvalidScaleError` when any value is NaN or inf."""
    v = values.detach()
    if v.is_floating_point() and not bool(torch.isfinite(v).all()):
        raise InvalidScaleError(f"{what} contains NaN or inf values", file=file, layer=layer)


def check_all_zero(values: torch.Tensor, *, what: str, layer: str, file: str | None) -> None:
    """Raise :class:`InvalidScaleError` unless every value is zero (symmetric quantization).

    vllm-ascend ignores ``weight_offset`` in its W8A8/W8A8_DYNAMIC/W4A8/W4A4
    schemes, which silently computes a wrong product for asymmetric weights;
    msmodelslim writes zeros for these schemes, and anything else is refused.
    """
    v = values.detach()
    if bool(torch.any(v != 0)):
        raise InvalidScaleError(
            f"non-zero {what} (e.g. {v[v != 0][0].item()!r}): asymmetric weights are not supported by "
            "integer-activation schemes, which assume symmetric weights (what msmodelslim writes)",
            file=file,
            layer=layer,
        )


def check_ratio(values: torch.Tensor, *, what: str, layer: str, file: str | None) -> None:
    """Raise :class:`InvalidScaleError` unless every value lies in ``(0, 1]`` (a clip ratio)."""
    v = values.detach().to(torch.float64)
    bad = ~torch.isfinite(v) | (v <= 0) | (v > 1)
    if bool(bad.any()):
        _, first = _first_bad(v, bad)
        raise InvalidScaleError(f"{what} {first!r} outside (0, 1]", file=file, layer=layer)


class ValueRule(Enum):
    """What the values of a quantization parameter must satisfy once loaded.

    Declared per checkpoint tensor (``CheckpointTensor.values``), enforced by the
    loader after loading and by ``vllm-modelslim inspect`` on the stored tensors.
    """

    ANY = "any"
    """No constraint (weights, integer biases, W4A8 ``scale_bias``)."""
    POSITIVE = "positive"
    """Finite and > 0 (scales)."""
    FINITE = "finite"
    """No NaN or inf (zero points of asymmetric weights, FlatQuant transforms)."""
    INT8 = "int8"
    """Integers in [−128, 127] (static activation offsets)."""
    ZERO = "zero"
    """All zero (weight offsets of integer-activation schemes)."""
    RATIO = "ratio"
    """In (0, 1] (FlatQuant clip ratios)."""


def check_value_rule(
    values: torch.Tensor, rule: ValueRule, *, what: str, layer: str, file: str | None
) -> None:
    """Apply one :class:`ValueRule` to ``values`` (any shape).

    Raises:
        InvalidScaleError: the values break the rule; the message names ``what``,
            the layer and the file.
    """
    if rule is ValueRule.POSITIVE:
        check_positive_finite(values, what=what, layer=layer, file=file)
    elif rule is ValueRule.FINITE:
        check_finite(values, what=what, layer=layer, file=file)
    elif rule is ValueRule.INT8:
        check_integer_range(values, -128, 127, what=what, layer=layer, file=file)
    elif rule is ValueRule.ZERO:
        check_all_zero(values, what=what, layer=layer, file=file)
    elif rule is ValueRule.RATIO:
        check_ratio(values, what=what, layer=layer, file=file)
