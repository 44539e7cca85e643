"""Kernel selection: the first kernel of a priority list that fits.

A kernel fits when this platform supports it and it can implement the requested
math (the two-question interface of vLLM's ``scaled_mm`` kernels).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, TypeVar

import torch


class QuantKernel(torch.nn.Module):
    """Base of every kernel: a module holding its own weight layout as buffers.

    Subclasses answer two questions at selection time and own two steps:
    ``__init__`` turns canonical tensors (what a scheme extracted from the
    checkpoint) into this kernel's layout, once; ``forward`` runs it.
    """

    name: ClassVar[str] = "kernel"

    @classmethod
    def is_supported(cls, device_type: str) -> tuple[bool, str | None]:
        """Whether this kernel runs on ``device_type`` ("cpu", "cuda", ...) at all."""
        return True, None

    @classmethod
    def can_implement(cls, config: Any) -> tuple[bool, str | None]:
        """Whether this kernel computes the math described by ``config``."""
        return True, None


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


def register_buffers(module: torch.nn.Module, **tensors: torch.Tensor | None) -> None:
    """Register each tensor as a non-persistent buffer (None values are kept as None)."""
    for name, tensor in tensors.items():
        module.register_buffer(name, tensor, persistent=False)
