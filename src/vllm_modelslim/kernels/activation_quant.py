"""Activation quantization: static per-tensor int8 and dynamic per-token int8/int4.

Semantics follow the NPU ops that vLLM Ascend calls (spec §0, §4.6-§4.7):

* static, ``npu_quantize(x, 1/scale, offset, qint8, div_mode=False)``:
  ``q = clamp(round(x · (1/scale) + offset), −128, 127)``, computed in fp32.
* dynamic, ``npu_dynamic_quant(x, int8 | quint4x2)`` and the quantizing half of
  ``npu_kronecker_quant``: per row (token) ``s = clip · max_k |x[m, k]| / qmax``
  with ``qmax = 127`` (int8) or ``7`` (int4), ``q = clamp(round(x / s))`` to the
  integer type's range ([−128, 127] or [−8, 7]; with ``clip = 1`` no value
  exceeds ``qmax``). A row of zeros gets ``s = 1`` and ``q = 0`` (the NPU op's
  result for such a row is not documented; any positive scale gives the same
  product).

Rounding is half-to-even (``torch.round``). Both ops are defined in fp32
arithmetic, as the NPU computes them: in float64 a few values per ten thousand
land on the other side of a .5 tie, and on a small model those flips alone move
log-probabilities by ~0.02, so the oracle must fix the arithmetic, not only the
formula. The ``*_reference`` twins state that semantics independently of the
fast code: float64 evaluation of the spec's formula, an explicit float32
rounding after each operation the NPU performs in fp32, and a written-out
half-to-even rounding (the oracles for any fused or vectorised fast path).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

RowMaxReduce = Callable[[torch.Tensor], torch.Tensor]
"""Combine of per-row maxima across tensor-parallel ranks: local ``max_k |x|`` float32 ``[...]`` → the
maximum over every rank's part of the row, same shape (a collective; identical on every rank)."""

INT8_MIN = -128
INT8_MAX = 127


def _dynamic_limits(bits: int) -> tuple[float, float, float]:
    """``(qmax, low, high)`` of signed ``bits``-bit dynamic quantization."""
    if bits not in (4, 8):
        raise ValueError(f"dynamic activation quantization supports 4 or 8 bits, not {bits}")
    high = 2.0 ** (bits - 1) - 1
    return high, -high - 1, high


def quantize_static_per_tensor(
    x: torch.Tensor, scale: float | torch.Tensor, offset: float | torch.Tensor
) -> torch.Tensor:
    """Static asymmetric per-tensor int8 quantization (ModelSlim W8A8 ``input_scale``/``input_offset``).

    Args:
        x: activations ``[..., K]``, any float dtype.
        scale: positive activation scale ``s_in`` (python float or 0-d/1-element tensor).
        offset: integer-valued zero point ``o_in`` in [−128, 127].

    Returns:
        int8 tensor of ``x``'s shape: ``clamp(round(x·(1/s_in) + o_in), −128, 127)``.
    """
    inv_scale = 1.0 / torch.as_tensor(scale, dtype=torch.float32, device=x.device).reshape(())
    offset_t = torch.as_tensor(offset, dtype=torch.float32, device=x.device).reshape(())
    q = torch.round(x.float() * inv_scale + offset_t)
    return q.clamp_(INT8_MIN, INT8_MAX).to(torch.int8)


def quantize_dynamic_per_token(
    x: torch.Tensor, bits: int = 8, clip_ratio: float = 1.0, row_max_reduce: RowMaxReduce | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic symmetric per-token quantization (W8A8_DYNAMIC, W4A8: 8 bits; W4A4: 4 bits).

    Args:
        x: activations ``[M, K]`` (or ``[..., K]``), any float dtype.
        bits: 8 or 4.
        clip_ratio: FlatQuant's clip ratio in (0, 1] (scale = clip·max|x|/qmax).
        row_max_reduce: when ``x`` is one rank's K-slice of a row-parallel
            layer, the combine of the ranks' row maxima, so that the scale is
            that of the full row (spec §4.2: ``max`` over all K); None: ``x``
            is the whole row.

    Returns:
        ``(q, s)``: ``q`` int8 of ``x``'s shape holding ``bits``-bit values, and
        ``s`` float32 ``[...]`` (one scale per row).
    """
    qmax, low, high = _dynamic_limits(bits)
    xf = x.float()
    row_max = xf.abs().amax(dim=-1)
    if row_max_reduce is not None:
        row_max = row_max_reduce(row_max)
    if clip_ratio != 1.0:
        scale = row_max * torch.tensor(clip_ratio / qmax, dtype=torch.float32, device=x.device)
    else:
        scale = row_max / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(xf / scale.unsqueeze(-1)).clamp_(low, high).to(torch.int8)
    return q, scale


def _round_half_to_even(v: torch.Tensor) -> torch.Tensor:
    """Nearest integer of float64 ``v``, ties to the even neighbour (written out, not ``torch.round``)."""
    low = torch.floor(v)
    frac = v - low  # exact in float64 for |v| < 2^52
    odd = torch.remainder(low, 2.0) == 1.0
    return low + ((frac > 0.5) | ((frac == 0.5) & odd)).to(torch.float64)


def _fp32(v: torch.Tensor) -> torch.Tensor:
    """One IEEE float32 rounding of a float64 result, kept in float64.

    For ``+ − × ÷`` of float32 operands the float64 result rounded to float32
    is the correctly rounded float32 result (53 ≥ 2·24 + 2 bits), so this
    states "the NPU performs this operation in fp32" without fp32 arithmetic.
    """
    return v.to(torch.float32).to(torch.float64)


def quantize_static_per_tensor_reference(x: torch.Tensor, scale: float, offset: float) -> torch.Tensor:
    """Oracle of :func:`quantize_static_per_tensor`, written from the spec, not from the fast code.

    Spec §4.1 step 1 and §0: vLLM Ascend passes ``scales = 1/s_in`` (a float32
    tensor, ``scale_reciprocal``) and ``o_in`` to ``npu_quantize(...,
    div_mode=False)``, which computes ``q = sat_int8(round(x·scales + o_in))``
    element-wise in fp32. Here every step is evaluated in float64 and rounded
    to float32 where the NPU holds an fp32 value (``s_in``, ``1/s_in``, the
    product, the sum), then rounded half to even (the project's tie rule, as
    ``torch.round``; the spec leaves CANN's tie rule open) and saturated.

    Args:
        x: activations ``[..., K]``, any float dtype.
        scale: ``s_in`` > 0 (python float; used as its float32 value).
        offset: integer-valued zero point ``o_in`` in [−128, 127].

    Returns:
        int8 tensor of ``x``'s shape.
    """
    s_in = _fp32(torch.tensor(float(scale), dtype=torch.float64))
    reciprocal = _fp32(1.0 / s_in)
    value = _fp32(_fp32(x.to(torch.float64) * reciprocal) + float(offset))
    return _round_half_to_even(value).clamp(INT8_MIN, INT8_MAX).to(torch.int8)


def quantize_dynamic_per_token_reference(
    x: torch.Tensor, bits: int = 8, clip_ratio: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Oracle of :func:`quantize_dynamic_per_token`, written from the spec, not from the fast code.

    Spec §0, ``npu_dynamic_quant`` / ``npu_kronecker_quant``: per row
    ``s = max_k |x[m, k]| / (qmax / clip)`` (``qmax`` = 127 for int8, 7 for
    int4; ``clip`` = 1 except FlatQuant), returned as float32, and
    ``q = round(x / s)``. The row maximum is exact; the scale is evaluated in
    float64 and rounded once to float32 (the op's output dtype); the quotient
    is evaluated in float64 and rounded to float32 (the NPU divides in fp32),
    then rounded half to even and clamped to the signed ``bits``-bit range. A
    row of zeros gets ``s = 1`` and ``q = 0``.

    Args:
        x: activations ``[M, K]`` (or ``[..., K]``), any float dtype.
        bits: 8 or 4.
        clip_ratio: FlatQuant's clip ratio in (0, 1].

    Returns:
        ``(q, s)``: ``q`` int8 of ``x``'s shape, ``s`` float32 ``[...]`` (one scale per row).
    """
    if bits not in (4, 8):
        raise ValueError(f"dynamic activation quantization supports 4 or 8 bits, not {bits}")
    qmax = float(2 ** (bits - 1) - 1)
    x64 = x.to(torch.float64)
    row_max = x64.abs().amax(dim=-1)
    scale = _fp32(row_max / (qmax / float(clip_ratio)))
    scale = torch.where(row_max > 0, scale, torch.ones_like(scale))
    q = _round_half_to_even(_fp32(x64 / scale.unsqueeze(-1))).clamp(-qmax - 1, qmax)
    return q.to(torch.int8), scale.to(torch.float32)
