"""Kernel selection: the first kernel of a priority list that fits.

A kernel fits when this platform supports it and it can implement the requested
math (the two-question interface of vLLM's ``scaled_mm`` kernels).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from vllm_modelslim.kernels.base import QuantKernel


class _Config(Protocol):
    device_type: str


K = TypeVar("K", bound=type[QuantKernel])


def choose_kernel(candidates: Sequence[K], config: _Config) -> K:
    """First kernel class of ``candidates`` that supports the device and the config.

    Raises:
        RuntimeError: none qualifies (the lists end with an always-valid reference
            kernel, so this means a bug); the message gives each one's reason.
    """
    reasons = []
    for kernel in candidates:
        ok, why = kernel.is_supported(config.device_type)
        if ok:
            ok, why = kernel.can_implement(config)
        if ok:
            return kernel
        reasons.append(f"{kernel.name}: {why}")
    raise RuntimeError(f"no kernel can implement {config}: " + "; ".join(reasons))
