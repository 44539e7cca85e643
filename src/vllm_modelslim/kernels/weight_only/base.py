"""Interface of the weight-only GEMM (W8A16, W4A16): int8 or int4 weights, float activations.

Math (ModelSlim W8A16 / W4A16 with the ERRATA sign, LLM-Compressor wNa16;
spec §4.3, §4.4, ERRATA 4): the zero point is subtracted, and a per-channel
scale is the one-group case ``g = K`` of per-group scales::

    W[n, k] = (q[n, k] − z[n, k // g]) · s[n, k // g]        q in [−8, 7] for int4
    y[m, n] = Σ_k x[m, k] · W[n, k] + b[n]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm_modelslim.kernels.base import Int8WeightKernel, register_buffers


@dataclass(frozen=True)
class WeightOnlyConfig:
    """What a layer asks of its weight-only kernel.

    Attributes:
        in_features: K. out_features: N.
        group_size: g, the K-group size of the scales (divides K; K for per-channel scales).
        act_dtype: dtype of the activations (the model dtype).
        bits: 8 (int8 values) or 4 (values in [−8, 7]); the weight is stored as int8 either way.
        device_type: where the weights live.
        zero_points: "none" (symmetric), "integer" (every zero point an integer
            ``z`` with ``z + 2^(bits−1)`` in the unsigned range ``[0, 2^bits)``,
            the AWQ-style integer zero points of GPU kernels) or "float" (any other).
    """

    in_features: int
    out_features: int
    group_size: int
    act_dtype: torch.dtype
    bits: int = 8
    device_type: str = "cpu"
    zero_points: str = "none"

    @property
    def per_channel(self) -> bool:
        """One scale group per output channel (``g = K``)."""
        return self.group_size == self.in_features


def zero_point_kind(zero_point: torch.Tensor | None, bits: int) -> str:
    """Classify zero points for :attr:`WeightOnlyConfig.zero_points` ("none", "integer" or "float")."""
    if zero_point is None:
        return "none"
    shifted = zero_point.to(torch.float64) + (1 << (bits - 1))
    integral = torch.equal(shifted, shifted.round())
    in_range = bool(shifted.min() >= 0) and bool(shifted.max() <= (1 << bits) - 1)
    return "integer" if integral and in_range else "float"


class WeightOnlyKernel(Int8WeightKernel):
    """Holds ``q`` int8 ``[N, K]``, ``s`` and ``z`` (or None) float32 ``[N, K/g]``.

    ``forward(x, bias)`` takes ``x`` ``[M, K]`` in ``act_dtype`` and ``bias``
    ``[N]`` or None, and returns ``[M, N]`` in ``x.dtype``.
    """

    def __init__(
        self,
        config: WeightOnlyConfig,
        weight: torch.Tensor,
        weight_scale: torch.Tensor,
        zero_point: torch.Tensor | None,
    ):
        super().__init__(config, weight, weight_scale)
        register_buffers(
            self, zero_point=None if zero_point is None else zero_point.to(torch.float32).contiguous()
        )
