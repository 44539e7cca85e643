"""Pure-torch layouts of vLLM's GPTQ-family weight-only CUDA kernels (Machete, Marlin), and their inverses.

The canonical weight-only description (int8 ``q`` ``[N, K]`` holding int4 or
int8 values, float32 scales and zero points ``[N, G]``, ``W = (q − z)·s``;
:mod:`vllm_modelslim.kernels.weight_only.base`) becomes what vLLM's GPTQ/AWQ
paths hand those kernels before their own GPU repack op runs. The facts here
were read from vLLM 0.32's ``quant_utils.pack_quantized_values_into_int32``,
``pack_cols`` and ``marlin_utils.marlin_permute_scales`` /
``marlin_zero_points`` (unchanged since vLLM 0.26); the unit tests compare
these functions with vLLM's helpers where vLLM is installed:

* stored values are unsigned, ``u = q + 2^(bits−1)`` (vLLM's ``uint4b8`` /
  ``uint8b128``: value = stored − bias);
* GPTQ packing: ``32 / bits`` values of consecutive input channels per int32
  along K, lowest bits first: ``words[K/p, N]``;
* Marlin group scales: ``[G, N]`` with the columns permuted in blocks of 64
  (per-group) or 32 (per-channel), see :func:`marlin_permute_scales`;
* Marlin zero points (AWQ style, 4-bit only): integers ``[G, N]``, permuted
  like per-group scales, interleaved in blocks of 8, packed along N.
"""

from __future__ import annotations

import torch


def unsigned_bias(bits: int) -> int:
    """``2^(bits−1)``: what is added to a signed value to store it unsigned (8 for int4, 128 for int8)."""
    return 1 << (bits - 1)


def pack_factor(bits: int) -> int:
    """Values per int32 word (8 for 4-bit, 4 for 8-bit)."""
    return 32 // bits


def _pack_last_dim(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned ``values [..., D]`` into int32 ``[..., D/p]``, lowest bits first."""
    p = pack_factor(bits)
    if values.shape[-1] % p:
        raise ValueError(f"cannot pack {values.shape[-1]} {bits}-bit values {p} to a word")
    groups = values.to(torch.int64).unflatten(-1, (-1, p))
    shifts = torch.arange(0, 32, bits, dtype=torch.int64, device=values.device)
    words = (groups << shifts).sum(dim=-1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def _unpack_last_dim(words: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`_pack_last_dim`: int32 ``[..., D/p]`` → int64 ``[..., D]``."""
    shifts = torch.arange(0, 32, bits, dtype=torch.int64, device=words.device)
    return ((words.to(torch.int64).unsqueeze(-1) >> shifts) & ((1 << bits) - 1)).flatten(-2)


def gptq_pack_weight(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed ``q`` int8 ``[N, K]`` → GPTQ words int32 ``[K / (32/bits), N]`` of ``u = q + 2^(bits−1)``.

    Raises:
        ValueError: K is not a multiple of ``32 / bits``.
    """
    unsigned = weight.to(torch.int64).T + unsigned_bias(bits)  # [K, N]
    return _pack_last_dim(unsigned.T, bits).T.contiguous()  # pack along K


def gptq_unpack_weight(words: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`gptq_pack_weight`: int32 ``[K/p, N]`` → signed int8 ``q`` ``[N, K]``."""
    unsigned = _unpack_last_dim(words.T, bits)  # [N, K]
    return (unsigned - unsigned_bias(bits)).to(torch.int8)


def _scale_perms() -> tuple[list[int], list[int]]:
    """Marlin's column permutations of the scales: 64-wide (per-group), 32-wide (per-channel)."""
    grouped = [i + 8 * j for i in range(8) for j in range(8)]
    single = [2 * i + j for i in range(4) for j in (0, 1, 8, 9, 16, 17, 24, 25)]
    return grouped, single


def marlin_permute_scales(scales: torch.Tensor, per_group: bool) -> torch.Tensor:
    """Scales ``[G, N]`` (N a multiple of 64) in Marlin's column order.

    Args:
        scales: ``[G, N]``, any dtype (the kernel takes the activation dtype).
        per_group: True when the K-groups are smaller than K (the 64-wide
            permutation); False for per-channel scales (``G = 1``, 32-wide).
    """
    grouped, single = _scale_perms()
    perm = grouped if per_group else single
    n = scales.shape[1]
    return scales.reshape(-1, len(perm))[:, perm].reshape(-1, n).contiguous()


def marlin_unpermute_scales(scales: torch.Tensor, per_group: bool) -> torch.Tensor:
    """Inverse of :func:`marlin_permute_scales`."""
    grouped, single = _scale_perms()
    inverse = torch.argsort(torch.tensor(grouped if per_group else single))
    n = scales.shape[1]
    return scales.reshape(-1, len(inverse))[:, inverse].reshape(-1, n).contiguous()


_ZP_INTERLEAVE_4BIT = (0, 2, 4, 6, 1, 3, 5, 7)


def marlin_pack_zero_points(zero_points: torch.Tensor) -> torch.Tensor:
    """Unsigned 4-bit zero points ``[G, N]`` (integers in [0, 15]) → Marlin's int32 ``[G, N/8]``.

    Raises:
        ValueError: a value is not an integer in [0, 15].
    """
    zp = zero_points.to(torch.float64)
    if zp.numel() and (torch.any(zp != zp.round()) or zp.min() < 0 or zp.max() > 15):
        raise ValueError("Marlin zero points must be integers in [0, 15]")
    grouped, _ = _scale_perms()
    n = zp.shape[1]
    zp = zp.to(torch.int64).reshape(-1, len(grouped))[:, grouped]
    zp = zp.reshape(-1, len(_ZP_INTERLEAVE_4BIT))[:, list(_ZP_INTERLEAVE_4BIT)].reshape(-1, n)
    return _pack_last_dim(zp, 4).contiguous()


def marlin_unpack_zero_points(words: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`marlin_pack_zero_points`: int32 ``[G, N/8]`` → int64 ``[G, N]``."""
    zp = _unpack_last_dim(words, 4)
    n = zp.shape[1]
    inverse_interleave = torch.argsort(torch.tensor(_ZP_INTERLEAVE_4BIT))
    zp = zp.reshape(-1, 8)[:, inverse_interleave].reshape(-1, n)
    return marlin_unpermute_scales(zp, per_group=True)


def group_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Canonical per-channel/per-group ``[N, G]`` → kernel layout ``[G, N]`` (contiguous)."""
    return tensor.reshape(tensor.shape[0], -1).T.contiguous()
