"""Base classes of the kernels: modules that own their weight layout as buffers."""

from __future__ import annotations

from typing import Any, ClassVar

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


class Int8WeightKernel(QuantKernel):
    """A kernel over an int8 weight ``[N, K]`` with a float32 per-output-channel scale ``[N]``."""

    def __init__(self, config: Any, weight: torch.Tensor, weight_scale: torch.Tensor):
        super().__init__()
        self.config = config
        register_buffers(
            self,
            weight=weight.to(torch.int8).contiguous(),
            weight_scale=channel_vector(weight_scale, torch.float32),
        )


def channel_vector(values: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``values`` as a contiguous 1-D ``[N]`` tensor of ``dtype`` (None stays None)."""
    return None if values is None else values.to(dtype).reshape(-1).contiguous()


def register_buffers(module: torch.nn.Module, **tensors: torch.Tensor | None) -> None:
    """Register each tensor as a non-persistent buffer (None values are kept as None)."""
    for name, tensor in tensors.items():
        module.register_buffer(name, tensor, persistent=False)
