"""Pack and unpack signed int4 values: the one module every int4 scheme uses.

Two storage conventions occur in the checkpoints we read:

* **two int4 per int8** (ModelSlim W4A16 / W4A8_DYNAMIC "new" layout, spec §4.5,
  ERRATA 4): element ``j`` of the packed dimension holds value ``2j`` in its
  low nibble and value ``2j+1`` in its high nibble, both two's complement:
  ``byte = (v[2j+1] << 4) | (v[2j] & 0xF)``.
* **eight int4 per int32** (LLM-Compressor ``pack-quantized``, spec §4.4):
  word ``i`` holds values ``8i..8i+7``, LSB first, each stored unsigned with
  an offset of 8: ``v = ((word >> 4j) & 0xF) − 8``.

Unpacked values are returned as int8 tensors in [−8, 7], the canonical form
the int4 kernels take.
"""

from __future__ import annotations

import torch

INT4_MIN = -8
INT4_MAX = 7
_NIBBLES_PER_INT32 = 8
_UNSIGNED_OFFSET = 8


def _check_int4_range(values: torch.Tensor) -> None:
    if values.numel() and (int(values.min()) < INT4_MIN or int(values.max()) > INT4_MAX):
        low, high = int(values.min()), int(values.max())
        raise ValueError(f"int4 values must lie in [{INT4_MIN}, {INT4_MAX}], found [{low}, {high}]")


def unpack_int4_pairs(packed: torch.Tensor, dim: int) -> torch.Tensor:
    """Unpack two signed int4 per int8 along ``dim`` (low nibble first).

    Args:
        packed: int8 tensor; ``dim`` has size ``D``.
        dim: the packed dimension.

    Returns:
        int8 tensor with ``2·D`` entries along ``dim``, values in [−8, 7].

    Raises:
        TypeError: ``packed`` is not int8.
    """
    if packed.dtype != torch.int8:
        raise TypeError(f"expected an int8 tensor of packed int4 pairs, got {packed.dtype}")
    low = torch.bitwise_right_shift(torch.bitwise_left_shift(packed, 4), 4)
    high = torch.bitwise_right_shift(packed, 4)
    dim = dim % packed.dim()
    stacked = torch.stack((low, high), dim=dim + 1)
    shape = list(packed.shape)
    shape[dim] *= 2
    return stacked.reshape(shape)


def pack_int4_pairs(values: torch.Tensor, dim: int) -> torch.Tensor:
    """Inverse of :func:`unpack_int4_pairs`.

    Raises:
        ValueError: values outside [−8, 7], or an odd size along ``dim``.
    """
    _check_int4_range(values)
    dim = dim % values.dim()
    if values.shape[dim] % 2:
        raise ValueError(f"cannot pack an odd number ({values.shape[dim]}) of int4 values in pairs")
    pairs = values.to(torch.int16).unflatten(dim, (values.shape[dim] // 2, 2))
    low = pairs.select(dim + 1, 0) & 0xF
    high = pairs.select(dim + 1, 1) & 0xF
    return ((high << 4) | low).to(torch.uint8).view(torch.int8)


def unpack_int4_from_int32(packed: torch.Tensor, dim: int, size: int | None = None) -> torch.Tensor:
    """Unpack eight offset-8 int4 per int32 along ``dim`` (LSB first), cropping to ``size``.

    Args:
        packed: int32 tensor.
        dim: the packed dimension (``D`` words → ``8·D`` values).
        size: logical size along ``dim`` (``weight_shape``), default ``8·D``.

    Returns:
        int8 tensor with values in [−8, 7].

    Raises:
        TypeError: ``packed`` is not int32.
        ValueError: ``size`` exceeds ``8·D``.
    """
    if packed.dtype != torch.int32:
        raise TypeError(f"expected an int32 tensor of packed int4 values, got {packed.dtype}")
    dim = dim % packed.dim()
    shifts = torch.arange(0, 4 * _NIBBLES_PER_INT32, 4, dtype=torch.int32, device=packed.device)
    view_shape = [1] * (packed.dim() + 1)
    view_shape[dim + 1] = _NIBBLES_PER_INT32
    nibbles = (packed.unsqueeze(dim + 1) >> shifts.view(view_shape)) & 0xF
    values = (nibbles - _UNSIGNED_OFFSET).to(torch.int8).flatten(dim, dim + 1)
    total = values.shape[dim]
    if size is not None:
        if size > total:
            raise ValueError(f"logical size {size} exceeds the {total} packed values along dim {dim}")
        values = values.narrow(dim, 0, size)
    return values


def pack_int4_to_int32(values: torch.Tensor, dim: int) -> torch.Tensor:
    """Inverse of :func:`unpack_int4_from_int32` (zero-pads ``dim`` to a multiple of 8).

    Raises:
        ValueError: values outside [−8, 7].
    """
    _check_int4_range(values)
    dim = dim % values.dim()
    pad = (-values.shape[dim]) % _NIBBLES_PER_INT32
    unsigned = values.to(torch.int64) + _UNSIGNED_OFFSET
    if pad:
        pad_shape = list(values.shape)
        pad_shape[dim] = pad
        filler = torch.full(pad_shape, _UNSIGNED_OFFSET, dtype=torch.int64, device=values.device)
        unsigned = torch.cat((unsigned, filler), dim=dim)
    groups = unsigned.unflatten(dim, (unsigned.shape[dim] // _NIBBLES_PER_INT32, _NIBBLES_PER_INT32))
    shifts = torch.arange(0, 4 * _NIBBLES_PER_INT32, 4, dtype=torch.int64, device=values.device)
    view_shape = [1] * groups.dim()
    view_shape[dim + 1] = _NIBBLES_PER_INT32
    words = (groups << shifts.view(view_shape)).sum(dim=dim + 1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
