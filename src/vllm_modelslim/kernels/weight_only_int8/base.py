"""Interface of the weight-only int8 GEMM (activations stay in float).

Math (ModelSlim W8A16, spec §4.3 with the ERRATA sign: the offset is a zero
point that is subtracted)::

    w[n, k] = (w_q[n, k] − z[n]) · s[n]
    y[m, n] = Σ_k x[m, k] · w[n, k] + b[n]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm_modelslim.kernels.base import Int8WeightKernel, channel_vector, register_buffers


@dataclass(frozen=True)
class WeightOnlyInt8Config:
    """What a layer asks of its weight-only int8 kernel.

    Attributes:
        in_features: K. out_features: N.
        act_dtype: dtype of the activations (the model dtype).
        has_zero_point: whether any ``z[n]`` is non-zero.
        device_type: where the weights live.
    """

    in_features: int
    out_features: int
    act_dtype: torch.dtype
    has_zero_point: bool
    device_type: str = "cpu"


class WeightOnlyInt8Kernel(Int8WeightKernel):
    """Holds ``w_q`` int8 ``[N, K]``, ``s`` float32 ``[N]`` and ``z`` float32 ``[N]`` (or None).

    ``forward(x, bias)`` takes ``x`` ``[M, K]`` in ``act_dtype`` and ``bias``
    ``[N]`` or None, and returns ``[M, N]`` in ``x.dtype``.
    """

    def __init__(
        self,
        config: WeightOnlyInt8Config,
        weight: torch.Tensor,
        weight_scale: torch.Tensor,
        zero_point: torch.Tensor | None,
    ):
        super().__init__(config, weight, weight_scale)
        register_buffers(self, zero_point=channel_vector(zero_point, torch.float32))
