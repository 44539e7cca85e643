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
    """Oracle: ``x · (L ⊗ R)`` with the full Kronecker product, in float32."""
    k = x.shape[-1]
    l_mat = left.to(torch.float32) if left is not None else None
    r_mat = right.to(torch.float32) if right is not None else None
    if l_mat is None:
        l_mat = torch.eye(k // r_mat.shape[0]) if r_mat is not None else torch.eye(1)
    if r_mat is None:
        r_mat = torch.eye(k // l_mat.shape[0])
    return x.to(torch.float32) @ torch.kron(l_mat, r_mat)
