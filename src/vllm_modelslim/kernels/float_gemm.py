"""Float32 GEMM over a weight dequantized block by block (the many-rows path of weight-only kernels)."""

from __future__ import annotations

from collections.abc import Callable

import torch

BLOCK_COLUMNS = 512
"""Output channels dequantized per block (a [K, 512] float32 block: 8 MiB at K = 4096)."""


def float32_gemm_by_blocks(
    x: torch.Tensor,
    weight_t_block: Callable[[slice], torch.Tensor],
    out_features: int,
    block: int = BLOCK_COLUMNS,
) -> torch.Tensor:
    """``x · Wᵀ`` in float32, with ``Wᵀ`` produced one block of output channels at a time.

    Args:
        x: ``[M, K]``, any float dtype (converted to float32).
        weight_t_block: ``columns -> Wᵀ[:, columns]``, a float32 ``[K, len(columns)]``
            tensor (any strides) for a ``slice`` of output channels; it is called
            once per block and its result dropped after use, so no float copy of
            the whole weight exists at any time.
        out_features: N.
        block: output channels per block.

    Returns:
        float32 ``[M, N]`` (the accumulator; the caller applies its epilogue).
    """
    x32 = x.to(torch.float32)
    parts = [
        torch.mm(x32, weight_t_block(slice(start, min(start + block, out_features))))
        for start in range(0, out_features, block)
    ]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
