"""Interface of the weight-only int4 GEMM with per-group scales (W4A16).

Math (ModelSlim W4A16 with the ERRATA sign, LLM-Compressor wNa16; spec §4.4, ERRATA 4)::

    W[n, k] = (q[n, k] − z[n, k // g]) · s[n, k // g]        q in [−8, 7]
    y[m, n] = Σ_k x[m, k] · W[n, k] + b[n]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm_modelslim.kernels.base import Int8WeightKernel, register_buffers


@dataclass(frozen=True)
class WeightOnlyInt4Config:
    """What a layer asks of its weight-only int4 kernel.

    Attributes:
        in_features: K. out_features: N. group_size: g (divides K).
        act_dtype: dtype of the activations (the model dtype).
        has_zero_point: whether any ``z`` is non-zero.
        device_type: where the weights live.
    """

    in_features: int
    out_features: int
    group_size: int
    act_dtype: torch.dtype
    has_zero_point: bool
    device_type: str = "cpu"


class WeightOnlyInt4Kernel(Int8WeightKernel):
    """Holds ``q`` int8 ``[N, K]`` (int4 values), ``s`` and ``z`` (or None) float32 ``[N, K/g]``.

    ``forward(x, bias)`` takes ``x`` ``[M, K]`` in ``act_dtype`` and ``bias``
    ``[N]`` or None, and returns ``[M, N]`` in ``x.dtype``.
    """

    def __init__(
        self,
        config: WeightOnlyInt4Config,
        weight: torch.Tensor,
        weight_scale: torch.Tensor,
        zero_point: torch.Tensor | None,
    ):
        super().__init__(config, weight, weight_scale)
        register_buffers(
            self, zero_point=None if zero_point is None else zero_point.to(torch.float32).contiguous()
        )

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        """``(q − z)·s`` as ``[N, K]`` in ``dtype`` (computed in float32)."""
        group = self.config.group_size
        w = self.weight.to(torch.float32).unflatten(1, (-1, group))
        if self.zero_point is not None:
            w = w - self.zero_point.unsqueeze(-1)
        return (w * self.weight_scale.unsqueeze(-1)).flatten(1).to(dtype)
