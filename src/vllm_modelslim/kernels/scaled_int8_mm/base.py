"""Interface of the int8 × int8 GEMM with exact int32 accumulation.

Math (ModelSlim W8A8 / W8A8_DYNAMIC / W4A8_DYNAMIC / W4A4, vLLM Ascend
``npu_quant_matmul``, spec §0, §4.1-§4.2, §4.5-§4.7)::

    acc[m, n] = Σ_k x_q[m, k] · w_q[n, k] + b_int[n]        (exact, int32)
    y[m, n]   = acc[m, n] · s_x[m] · s_w[n] + b[n]            (then cast to out dtype)

or, with per-group weight scales (legacy per-group W4A8, group size g)::

    y[m, n] = s_x[m] · Σ_j s_w[n, j] · Σ_{k in group j} x_q[m, k] · w_q[n, k] + b[n]

``x_q`` and ``w_q`` are int8 tensors; int4 operands are int8 tensors holding
values in [−8, 7] (the accumulation is the same integer sum).

``s_x`` is the per-token activation scale of dynamic quantization (absent for
static quantization, where the activation scale is folded into ``s_w``, i.e.
ModelSlim's ``deq_scale``), ``b_int`` an int32 bias in accumulator units
(ModelSlim's ``quant_bias``) and ``b`` a float bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm_modelslim.kernels.base import Int8WeightKernel, channel_vector, register_buffers


@dataclass(frozen=True)
class ScaledInt8MMConfig:
    """What a layer asks of its int8 GEMM kernel.

    Attributes:
        in_features: K.
        out_features: N.
        device_type: where the weights live ("cpu", "cuda").
        group_size: K-group size of the weight scales (0: per output channel).
        has_int_bias: whether an int32 bias ``b_int`` is added to the accumulator.
        out_dtype: the output dtype the layer asks for (None: not given; kernels
            that write only some dtypes then refuse).
        int_bias_zero_point: an activation zero point ``z`` that splits the int32
            bias as ``b_int = −z·Σ_k w_q[n, k] + r[n]`` with every ``|r| ≤ 2^24``
            (exact in float32), see :func:`int_bias_zero_point`; None when no
            such split was found. Kernels that take a per-tensor activation zero
            point and a float32 bias (``vllm_onednn_static``) need it.
    """

    in_features: int
    out_features: int
    device_type: str = "cpu"
    group_size: int = 0
    has_int_bias: bool = False
    out_dtype: torch.dtype | None = None
    int_bias_zero_point: int | None = 0


FLOAT32_EXACT_INT = 2**24
"""Every integer of magnitude up to this is exactly representable in float32."""

_ZERO_POINT_RANGE = (-128, 127)


def weight_row_sums(weight: torch.Tensor) -> torch.Tensor:
    """``S[n] = Σ_k w_q[n, k]`` of an int8 weight ``[N, K]``, exact, as int64 ``[N]``.

    On CPU one ``torch._int_mm`` with a row of ones (exact int32 sums, |S| ≤
    128·K): 2.3 ms for a 4096 × 11008 weight where ``sum(dtype=int64)`` took
    317 ms (one thread), which at load would add minutes on an 8B model.
    ``_int_mm`` is wrong for K = 1 on CPU; that case and other devices sum directly.
    """
    if weight.device.type == "cpu" and weight.shape[1] >= 2:
        ones = torch.ones(1, weight.shape[1], dtype=torch.int8)
        return torch._int_mm(ones, weight.T)[0].to(torch.int64)
    return weight.sum(dim=1, dtype=torch.int64)


def int_bias_zero_point(weight: torch.Tensor, int_bias: torch.Tensor) -> int | None:
    """The activation zero point ``z`` whose compensation ``−z·Σ_k w_q[n, k]`` best explains ``b_int``.

    Static asymmetric int8 activations ``x_q = round(x/s) + z`` carry ``z``
    into the accumulator; ModelSlim's ``quant_bias`` (spec §4.1, ERRATA 2) is
    ``round(bias/deq_scale) − z·Σ_k w_q[n, k]`` and LLM-Compressor's
    asymmetric static layers give ``−z·Σ_k w_q[n, k]``. Any integer ``z`` keeps
    ``Σ_k (x_q − z)·w_q + (b_int + z·Σ_k w_q) = acc + b_int`` exact; this one
    is the least-squares fit ``z = round(−Σ_n b_int·S / Σ_n S²)`` of
    ``b_int ≈ −z·S`` (``S[n] = Σ_k w_q[n, k]``), clamped to the int8 range, so
    that both terms stay small: it recovers ModelSlim's ``input_offset``
    exactly when the checkpoint folded no float bias.

    Args:
        weight: int8 ``[N, K]``.
        int_bias: int32 ``[N]``.

    Returns:
        ``z``, or None when a remainder ``b_int + z·S`` would exceed
        :data:`FLOAT32_EXACT_INT` in magnitude (not exact as a float32 bias).
    """
    sums = weight_row_sums(weight)
    bias = int_bias.to(torch.int64).reshape(-1)
    norm = float((sums.double() ** 2).sum())
    zero_point = 0 if norm == 0 else round(-float((bias.double() * sums.double()).sum()) / norm)
    zero_point = min(max(zero_point, _ZERO_POINT_RANGE[0]), _ZERO_POINT_RANGE[1])
    remainder = bias + zero_point * sums
    if int(remainder.abs().max()) > FLOAT32_EXACT_INT:
        return None
    return zero_point


class ScaledInt8MMKernel(Int8WeightKernel):
    """Holds ``w_q`` int8 ``[N, K]``, ``s_w`` fp32 ``[N]`` or ``[N, K/g]``, optional int32 ``b_int`` ``[N]``.

    ``forward(x_q, x_scale, bias, out_dtype)`` takes ``x_q`` int8 ``[M, K]``,
    ``x_scale`` float32 ``[M]`` or None, ``bias`` ``[N]`` or None and returns
    ``[M, N]`` in ``out_dtype``.
    """

    def __init__(
        self,
        config: ScaledInt8MMConfig,
        weight: torch.Tensor,
        weight_scale: torch.Tensor,
        int_bias: torch.Tensor | None = None,
    ):
        super().__init__(config, weight, weight_scale)
        if config.group_size and int_bias is not None:
            raise ValueError("an int32 bias is defined for per-channel weight scales only")
        register_buffers(self, int_bias=channel_vector(int_bias, torch.int32))

    def epilogue(
        self,
        acc: torch.Tensor,
        x_scale: torch.Tensor | None,
        bias: torch.Tensor | None,
        out_dtype: torch.dtype,
    ) -> torch.Tensor:
        """``(acc + b_int) · s_x · s_w + b`` in float32 from an exact int32 ``acc`` ``[M, N]``."""
        if self.int_bias is not None:
            acc = acc + self.int_bias
        return self.scale_epilogue(acc.to(torch.float32), x_scale, bias, out_dtype)

    def scale_epilogue(
        self,
        y: torch.Tensor,
        x_scale: torch.Tensor | None,
        bias: torch.Tensor | None,
        out_dtype: torch.dtype,
    ) -> torch.Tensor:
        """``y · s_x · s_w + b`` in float32 for ``y = float32(acc + b_int)`` ``[M, N]`` (b_int already in)."""
        if x_scale is not None:
            y = y * x_scale.to(torch.float32).reshape(-1, 1)
        y = y * self.weight_scale
        if bias is not None:
            y = y + bias.to(torch.float32)
        return y.to(out_dtype)

    def group_epilogue(
        self,
        scaled: torch.Tensor,
        x_scale: torch.Tensor | None,
        bias: torch.Tensor | None,
        out_dtype: torch.dtype,
    ) -> torch.Tensor:
        """``scaled · s_x + b`` for ``scaled = Σ_j s_w[:, j]·acc_j`` (float32 ``[M, N]``)."""
        if x_scale is not None:
            scaled = scaled * x_scale.to(torch.float32).reshape(-1, 1)
        if bias is not None:
            scaled = scaled + bias.to(torch.float32)
        return scaled.to(out_dtype)
