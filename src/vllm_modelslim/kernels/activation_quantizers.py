"""Activation quantizer kernels (static per-tensor int8, dynamic per-token int8/int4) and their selection.

The math is :mod:`vllm_modelslim.kernels.activation_quant`'s. A quantizer
module holds what the forward needs as device buffers (the static scale and
zero point), so its forward copies nothing from the host and branches on no
tensor value: it can be captured in a CUDA graph. The torch kernel
(:class:`TorchActivationQuant`, the functions of ``activation_quant``) ends the
list and runs everywhere; :class:`VllmCudaActivationQuant` runs vLLM's CUDA ops
(``static_scaled_int8_quant``/``dynamic_scaled_int8_quant``), whose rounding
differs from the torch kernel's on rare values (see its docstring).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm_modelslim.kernels.activation_quant import (
    RowMaxReduce,
    quantize_dynamic_per_token,
    quantize_static_per_tensor,
)
from vllm_modelslim.kernels.base import QuantKernel
from vllm_modelslim.kernels.selection import choose_kernel, priority_list
from vllm_modelslim.kernels.vllm_cuda.int8_ops import (
    VllmInt8Ops,
    int8_ops_unavailable_reason,
    quantize_dynamic,
    quantize_static,
)


@dataclass(frozen=True)
class ActivationQuantConfig:
    """What a layer asks of its activation quantizer.

    Attributes:
        device_type: where the activations live ("cpu", "cuda").
        bits: 8 or 4 (dynamic only; static quantization is int8).
        clip_ratio: dynamic scale ``clip · max|x| / qmax`` (FlatQuant), 1.0 otherwise.
        static: per-tensor static scale and zero point instead of per-token dynamic scales.
        integer_offset: the static zero point is integer-valued.
        rank_row_max: dynamic scales of a row-parallel layer's K-slice take the
            maximum over all tensor-parallel ranks' slices (a ``RowMaxReduce``).
    """

    device_type: str = "cpu"
    bits: int = 8
    clip_ratio: float = 1.0
    static: bool = False
    integer_offset: bool = True
    rank_row_max: bool = False


class ActivationQuantKernel(QuantKernel):
    """``forward(x [M, K] float) -> (x_q int8 [M, K], x_scale float32 [M] or [M, 1], None when static)``.

    Static quantizers hold ``scale`` and ``offset`` as float32 ``[1]`` buffers
    on the activations' device (moved with the module); dynamic ones of a
    row-parallel layer under tensor parallelism hold the ``row_max_reduce``
    combine (``config.rank_row_max``).
    """

    holds_weight = False

    def __init__(
        self,
        config: ActivationQuantConfig,
        scale: torch.Tensor | None = None,
        offset: torch.Tensor | None = None,
        row_max_reduce: RowMaxReduce | None = None,
    ):
        super().__init__()
        self.config = config
        if config.static and (scale is None or offset is None):
            raise ValueError("a static activation quantizer needs its scale and offset")
        if config.rank_row_max != (row_max_reduce is not None):
            raise ValueError("config.rank_row_max needs a row_max_reduce, and only then")
        self.row_max_reduce = row_max_reduce
        for name, value in (("scale", scale), ("offset", offset)):
            value = None if value is None else value.to(torch.float32).reshape(1).contiguous()
            self.register_buffer(name, value, persistent=False)


class TorchActivationQuant(ActivationQuantKernel):
    """The torch functions of ``activation_quant`` (every device, every config)."""

    name = "torch_quant"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:  # noqa: D102
        if self.config.static:
            return quantize_static_per_tensor(x, self.scale, self.offset), None
        return quantize_dynamic_per_token(
            x, bits=self.config.bits, clip_ratio=self.config.clip_ratio, row_max_reduce=self.row_max_reduce
        )


class VllmCudaActivationQuant(ActivationQuantKernel):
    """vLLM's int8 quantization ops on CUDA (int8, no clipping, integer zero points).

    Against the torch kernel (``activation_quant``'s semantics): the static op
    rounds ``x·(1/s)`` and then adds the zero point (``round(x/s + o)`` there),
    and the dynamic op multiplies by ``127/max|x|`` (divides by
    ``max|x|/127`` there): both are the same except that a value on or within
    float32 rounding of a .5 tie may land one step apart. A zero row gets scale
    0 (1 there); its product is 0 either way. ``ops`` replaces vLLM's ops (tests).
    """

    name = "vllm_int8_quant"
    device_types = frozenset({"cuda"})

    @classmethod
    def is_supported(cls, device_type: str) -> tuple[bool, str | None]:
        if device_type != "cuda":
            return False, "vLLM's int8 quantization ops are CUDA kernels"
        reason = int8_ops_unavailable_reason()
        return (reason is None), reason

    @classmethod
    def can_implement(cls, config: ActivationQuantConfig) -> tuple[bool, str | None]:
        if config.bits != 8:
            return False, f"int8 only, not int{config.bits}"
        if config.clip_ratio != 1.0:
            return False, "no clip ratio"
        if config.rank_row_max:
            return False, "no row maximum across tensor-parallel ranks"
        if config.static and not config.integer_offset:
            return False, "the zero point must be an integer"
        return True, None

    def __init__(
        self, config, scale=None, offset=None, row_max_reduce=None, *, ops: VllmInt8Ops | None = None
    ):
        super().__init__(config, scale, offset, row_max_reduce)
        self._ops = ops if ops is not None else VllmInt8Ops.from_vllm()
        azp = None if offset is None else self.offset.round().to(torch.int32)
        self.register_buffer("azp", azp, persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:  # noqa: D102
        if self.config.static:
            # Always the zero-point variant: it multiplies by 1/s as the torch kernel does.
            return quantize_static(self._ops, x, self.scale, self.azp), None
        return quantize_dynamic(self._ops, x)


ACTIVATION_QUANT_KERNELS: list[type[ActivationQuantKernel]] = priority_list(
    VllmCudaActivationQuant,
    TorchActivationQuant,
)
"""Priority order; the torch kernel always qualifies."""


def make_activation_quant(
    device: torch.device | str,
    bits: int = 8,
    clip_ratio: float = 1.0,
    scale: torch.Tensor | None = None,
    offset: torch.Tensor | None = None,
    kernel: type[ActivationQuantKernel] | None = None,
    label: str | None = None,
    row_max_reduce: RowMaxReduce | None = None,
) -> ActivationQuantKernel:
    """Build the best activation quantizer: static when ``scale`` and ``offset`` are given, else dynamic.

    Args:
        device: where the activations will be.
        bits: 8 or 4 (dynamic).
        clip_ratio: FlatQuant clip ratio in (0, 1] (dynamic).
        scale: static ``s_in`` > 0, 1-element tensor (moved to ``device`` here, once).
        offset: static zero point ``o_in``, 1-element tensor.
        kernel: force a kernel class instead of selecting one.
        label: what the layer is, for the selection log line.
        row_max_reduce: dynamic only: the combine of the row maxima across
            tensor-parallel ranks of a row-parallel layer (full-row scales);
            None without tensor parallelism (the tp=1 path is unchanged).

    Raises:
        ValueError: only one of ``scale``/``offset``, a ``row_max_reduce`` with static
            quantization, or ``VLLM_MODELSLIM_DISABLED_KERNELS`` is invalid.
        RuntimeError: a forced ``kernel`` cannot run this config here.
    """
    device = torch.device(device)
    static = scale is not None or offset is not None
    if static and (scale is None or offset is None):
        raise ValueError("static activation quantization needs both scale and offset")
    if static and row_max_reduce is not None:
        raise ValueError("static activation quantization has no per-row maxima to combine")
    if static:
        scale = scale.to(device=device, dtype=torch.float32)
        offset = offset.to(device=device, dtype=torch.float32)
    config = ActivationQuantConfig(
        device_type=device.type,
        bits=8 if static else bits,
        clip_ratio=clip_ratio,
        static=static,
        integer_offset=not static or bool((offset == offset.round()).all()),
        rank_row_max=row_max_reduce is not None,
    )
    what = "static per-tensor int8" if static else f"dynamic per-token int{config.bits}"
    if row_max_reduce is not None:
        what += ", row maximum across tensor-parallel ranks"
    purpose = f"activation quantization, {what}"
    cls = choose_kernel(
        ACTIVATION_QUANT_KERNELS, config, f"{label} ({purpose})" if label else purpose, forced=kernel
    )
    return cls(config, scale, offset, row_max_reduce)
