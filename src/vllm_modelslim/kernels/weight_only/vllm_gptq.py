"""Shared part of the weight-only kernels on vLLM's GPTQ-family CUDA ops (Machete, Marlin).

Each kernel turns the canonical description (``q`` int8 ``[N, K]``, float32
``s``/``z`` ``[N, G]``, ``W = (q − z)·s``) into a :class:`GptqLayout` in pure
torch (:meth:`VllmGptqWeightOnly.gptq_layout`, unit-tested on CPU against the
float64 reference by unpacking it again), then hands the packed words to
vLLM's repack op on the GPU once, in ``__init__``. ``forward`` is one op call
plus an optional bias add: no host↔device copy, no ``.item()``, no branch on
tensor values, so it can be captured in a CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from vllm_modelslim.kernels.vllm_cuda.ops import cuda_capability, vllm_cuda_unavailable_reason
from vllm_modelslim.kernels.vllm_cuda.weight_only_ops import schema_mismatch_reason
from vllm_modelslim.kernels.weight_only.base import WeightOnlyConfig, WeightOnlyKernel

HALF_DTYPES = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class GptqLayout:
    """What a GPTQ-family kernel is given, before vLLM's GPU repack.

    Attributes:
        words: int32 ``[K / (32/bits), N]``, unsigned ``u = q + 2^(bits−1)`` packed along K.
        scales: ``[G, N]`` in the activation dtype (kernel column order).
        zeros: the kernel's zero-point tensor (layout per kernel), or None.
        type_id: vLLM ``ScalarType`` id of the stored values.
        group_size: the kernel's group-size argument (−1: per channel).
    """

    words: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None
    type_id: int
    group_size: int


class VllmGptqWeightOnly(WeightOnlyKernel):
    """Base of :class:`VllmMacheteWeightOnly` and :class:`VllmMarlinWeightOnly`.

    Subclasses set ``ops``, ``op_family``, ``min_capability`` (and
    ``exact_capability`` where only one architecture is built), implement
    :meth:`gptq_layout`, :meth:`_pack_on_device` and ``forward``.
    """

    copies_weight = True
    device_types = frozenset({"cuda"})
    ops: ClassVar[tuple[str, ...]] = ()
    op_family: ClassVar[str] = ""
    min_capability: ClassVar[int] = 0
    exact_capability: ClassVar[int | None] = None

    @classmethod
    def is_supported(cls, device_type: str) -> tuple[bool, str | None]:
        if device_type != "cuda":
            return False, f"{cls.op_family} is a CUDA kernel"
        why = vllm_cuda_unavailable_reason(*cls.ops, min_capability=cls.min_capability)
        if why is None:
            why = schema_mismatch_reason(*cls.ops)
        if why is not None:
            return False, why
        if cls.exact_capability is not None and cuda_capability() != cls.exact_capability:
            wanted = f"{cls.exact_capability // 10}.{cls.exact_capability % 10}"
            return False, f"{cls.op_family} is built for compute capability {wanted} only"
        return True, None

    @classmethod
    def common_refusal(cls, config: WeightOnlyConfig) -> str | None:
        """Why neither kernel takes ``config`` whatever its shape (dtype, bits), or None."""
        if config.act_dtype not in HALF_DTYPES:
            return f"{cls.op_family} takes fp16/bf16 activations, not {config.act_dtype}"
        if config.bits not in (4, 8):
            return f"no {config.bits}-bit weights"
        return None

    @classmethod
    def gptq_layout(
        cls,
        config: WeightOnlyConfig,
        weight: torch.Tensor,
        weight_scale: torch.Tensor,
        zero_point: torch.Tensor | None,
    ) -> GptqLayout:
        """The kernel's inputs from the canonical tensors (pure torch, any device).

        Args:
            weight: int8 ``[N, K]``; weight_scale, zero_point: float32 ``[N, G]`` (zero_point may be None).
        """
        raise NotImplementedError

    def __init__(self, config, weight, weight_scale, zero_point):
        super().__init__(config, weight, weight_scale, zero_point)
        layout = self.gptq_layout(config, self.weight, self.weight_scale, self.zero_point)
        self.type_id = layout.type_id
        self.group_arg = layout.group_size
        self.weight = self._pack_on_device(layout)
        self.weight_scale = layout.scales
        self.zero_point = layout.zeros

    def _pack_on_device(self, layout: GptqLayout) -> torch.Tensor:
        """Run vLLM's repack op on ``layout.words`` (on the GPU)."""
        raise NotImplementedError

    @staticmethod
    def add_bias(y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``y + bias`` in ``y.dtype`` (bias ``[N]`` or None)."""
        return y if bias is None else y + bias.to(y.dtype)
