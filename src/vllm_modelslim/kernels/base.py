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
    device_types: ClassVar[frozenset[str] | None] = None
    """Device types the kernel is built for (None: any). Selection passes over a kernel built for
    other devices without listing it among the skipped ones (a CUDA kernel is not news on CPU)."""
    holds_weight: ClassVar[bool] = True
    """False for kernels that hold no weight (activation quantizers): they do not decide whether
    the layer's checkpoint weight can be freed (:attr:`copies_weight`)."""
    copies_weight: ClassVar[bool] = False
    """True when the kernel keeps its own copy of the weight (e.g. a library's prepacked layout),
    so that the layer's checkpoint tensor can be freed after loading."""
    copies_scales: ClassVar[bool] = False
    """True when the kernel also keeps its own copy of the weight's scales and zero points (in
    its layout), so that the layer's checkpoint ``weight_scale``/``weight_offset`` can be freed too."""

    @classmethod
    def is_supported(cls, device_type: str) -> tuple[bool, str | None]:
        """Whether this kernel runs on ``device_type`` ("cpu", "cuda", ...) at all."""
        return True, None

    @classmethod
    def can_implement(cls, config: Any) -> tuple[bool, str | None]:
        """Whether this kernel computes the math described by ``config``."""
        return True, None


class Int8WeightKernel(QuantKernel):
    """A kernel over an int8 weight ``[N, K]`` (int8 or int4 values) and its float32 scales.

    ``weight_scale`` is per output channel, ``[N]`` (an ``[N, 1]`` input is
    flattened), or per channel and K-group, ``[N, K / group_size]``, when
    ``config.group_size`` is set.
    """

    def __init__(self, config: Any, weight: torch.Tensor, weight_scale: torch.Tensor):
        super().__init__()
        self.config = config
        grouped = getattr(config, "group_size", 0) > 0
        register_buffers(
            self,
            weight=weight.to(torch.int8).contiguous(),
            weight_scale=weight_scale.to(torch.float32).contiguous()
            if grouped
            else channel_vector(weight_scale, torch.float32),
        )


def channel_vector(values: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``values`` as a contiguous 1-D ``[N]`` tensor of ``dtype`` (None stays None)."""
    return None if values is None else values.to(dtype).reshape(-1).contiguous()


def register_buffers(module: torch.nn.Module, **tensors: torch.Tensor | None) -> None:
    """Register each tensor as a non-persistent buffer (None values are kept as None)."""
    for name, tensor in tensors.items():
        module.register_buffer(name, tensor, persistent=False)
