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
formula. The ``*_reference`` twins are the plain, unfused statement of that
semantics (the oracles for any fused or vectorised fast path); the fast
versions below are currently the same plain-torch code.
"""

from __future__ import annotations

import torch

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
    x: torch.Tensor, bits: int = 8, clip_ratio: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic symmetric per-token quantization (W8A8_DYNAMIC, W4A8: 8 bits; W4A4: 4 bits).

    Args:
        x: activations ``[M, K]`` (or ``[..., K]``), any float dtype.
        bits: 8 or 4.
        clip_ratio: FlatQuant's clip ratio in (0, 1] (scale = clip·max|x|/qmax).

    Returns:
        ``(q, s)``: ``q`` int8 of ``x``'s shape holding ``bits``-bit values, and
        ``s`` float32 ``[...]`` (one scale per row).
    """
    qmax, low, high = _dynamic_limits(bits)
    xf = x.float()
    row_max = xf.abs().amax(dim=-1)
    if clip_ratio != 1.0:
        scale = row_max * torch.tensor(clip_ratio / qmax, dtype=torch.float32, device=x.device)
    else:
        scale = row_max / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(xf / scale.unsqueeze(-1)).clamp_(low, high).to(torch.int8)
    return q, scale


def quantize_static_per_tensor_reference(x: torch.Tensor, scale: float, offset: float) -> torch.Tensor:
    """Oracle of :func:`quantize_static_per_tensor`: one fp32 multiply-add, round, clamp."""
    inv_scale = torch.tensor(1.0, dtype=torch.float32) / torch.tensor(float(scale), dtype=torch.float32)
    q = torch.round(x.to(torch.float32) * inv_scale + torch.tensor(float(offset), dtype=torch.float32))
    return q.clamp(INT8_MIN, INT8_MAX).to(torch.int8)


def quantize_dynamic_per_token_reference(
    x: torch.Tensor, bits: int = 8, clip_ratio: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Oracle of :func:`quantize_dynamic_per_token`: fp32 row max, fp32 divide, round, clamp."""
    qmax, low, high = _dynamic_limits(bits)
    xf = x.to(torch.float32)
    row_max = xf.abs().amax(dim=-1)
    if clip_ratio != 1.0:
        scale = row_max * torch.tensor(clip_ratio / qmax, dtype=torch.float32)
    else:
        scale = row_max / torch.tensor(qmax, dtype=torch.float32)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(xf / scale.unsqueeze(-1)).clamp(low, high).to(torch.int8)
    return q, scale
