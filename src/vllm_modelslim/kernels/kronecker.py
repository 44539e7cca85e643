"""FlatQuant's Kronecker-structured activation transform (spec §4.6, ERRATA 6).

Each token's activation row ``x`` (length ``K = L·R``) is viewed as an
``L × R`` matrix ``X`` and transformed as ``X'' = Lᵀ·X·R``, i.e. flattened
row-major ``x'' = x · (L ⊗ R)``. Either factor may be absent (identity): a
FlatQuant ``o_proj`` stores only ``left_trans`` (a transform across heads).
The product is computed in float32, as the NPU's ``npu_kronecker_quant``
does before it quantizes ``x''`` to int4: the result is quantized at once, so
the arithmetic, not only the formula, defines it (see ``activation_quant``).
"""

from __future__ import annotations

from functools import partial

import torch


def kronecker_transform(
    x: torch.Tensor, left: torch.Tensor | None, right: torch.Tensor | None
) -> torch.Tensor:
    """``Lᵀ·X·R`` per token, float32 ``[M, K]``.

    Args:
        x: activations ``[M, K]``, any float dtype.
        left: ``L`` ``[l, l]`` float32 or None (identity).
        right: ``R`` ``[r, r]`` float32 or None (identity).

    Raises:
        ValueError: the factors' sizes do not multiply to K.
    """
    rows, k = x.shape
    l_size = left.shape[0] if left is not None else k // right.shape[0] if right is not None else 1
    r_size = right.shape[0] if right is not None else k // l_size
    if l_size * r_size != k:
        raise ValueError(f"transform sizes {l_size}×{r_size} do not match K = {k}")
    matrix = x.to(torch.float32).reshape(rows, l_size, r_size)
    if right is not None:
        matrix = torch.matmul(matrix, right.to(torch.float32))
    if left is not None:
        matrix = torch.matmul(left.to(torch.float32).T, matrix)
    return matrix.reshape(rows, k)


def kronecker_transform_reference(
    x: torch.Tensor, left: torch.Tensor | None, right: torch.Tensor | None
) -> torch.Tensor:
    """Oracle: ``x · (L ⊗ R)`` with the explicit Kronecker product, in float64.

    Spec §0 (``npu_kronecker_quant``: ``X'' = P1ᵀ·X·P2`` per token, see ERRATA 6)
    and §4.6: for a row-major flattened ``X`` ``[l, r]`` that is
    ``x'' = x · kron(L, R)``. The ``[K, K]`` matrix is built here in float64
    (an absent factor is the identity of the size that makes ``l·r = K``), so
    the result carries float64 rounding only.

    Args:
        x: activations ``[M, K]``, any float dtype.
        left: ``L`` ``[l, l]`` or None (identity).
        right: ``R`` ``[r, r]`` or None (identity).

    Returns:
        float64 ``[M, K]``.
    """
    k = x.shape[-1]
    l_size = left.shape[0] if left is not None else k // right.shape[0]
    r_size = right.shape[0] if right is not None else k // l_size
    eye = partial(torch.eye, dtype=torch.float64)
    l_mat = left.to(torch.float64) if left is not None else eye(l_size)
    r_mat = right.to(torch.float64) if right is not None else eye(r_size)
    full = torch.kron(l_mat, r_mat)
    if full.shape != (k, k):
        raise ValueError(f"transform sizes {l_size}×{r_size} do not match K = {k}")
    return x.to(torch.float64) @ full
