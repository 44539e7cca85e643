"""Float32 GEMM over a weight dequantized block by block (the many-rows path of weight-only kernels).

Each block of output channels is dequantized into one float32 scratch buffer
that is reused by every call and every layer: allocating a fresh float32
weight per call costs more in page faults than the conversion itself
(measured on 2 cores, K = N = 4096: int8 → float32 into a new tensor 30 ms,
into an existing one 4.6 ms).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

BLOCK_COLUMNS = 512
"""Output channels dequantized per block (a [512, K] float32 block: 8 MiB at K = 4096)."""

_scratch: dict[tuple[torch.device, bool], torch.Tensor] = {}


def scratch_buffer(numel: int, device: torch.device) -> torch.Tensor:
    """A float32 buffer of at least ``numel`` elements, shared by every caller on ``device``.

    Its contents are only valid until the next call; it grows to the largest
    request seen (one block of the widest layer) and is never freed. One
    buffer is kept per inference-mode state: a tensor allocated under
    ``torch.inference_mode`` (as vLLM runs the model) cannot be written
    outside it, and the same process may run both.
    """
    key = (torch.device(device), torch.is_inference_mode_enabled())
    buffer = _scratch.get(key)
    if buffer is None or buffer.numel() < numel:
        buffer = torch.empty(numel, dtype=torch.float32, device=device)
        _scratch[key] = buffer
    return buffer[:numel]


def float32_gemm_by_blocks(
    x: torch.Tensor,
    weight_t_block: Callable[[slice, torch.Tensor], torch.Tensor],
    out_features: int,
    block: int = BLOCK_COLUMNS,
) -> torch.Tensor:
    """``x · Wᵀ`` in float32, with ``Wᵀ`` dequantized one block of output channels at a time.

    Args:
        x: ``[M, K]``, any float dtype (converted to float32).
        weight_t_block: ``(columns, scratch) -> Wᵀ[:, columns]``: a float32
            ``[K, len(columns)]`` tensor (any strides) for a ``slice`` of output
            channels, written into ``scratch`` (a flat float32 buffer of
            ``K · len(columns)`` elements, valid until the next block) or
            freshly allocated. No float copy of the whole weight ever exists.
        out_features: N.
        block: output channels per block.

    Returns:
        float32 ``[M, N]`` (the accumulator; the caller applies its epilogue).
    """
    x32 = x.to(torch.float32)
    k = x.shape[-1]
    out = torch.empty(x.shape[0], out_features, dtype=torch.float32, device=x.device)
    for start in range(0, out_features, block):
        cols = slice(start, min(start + block, out_features))
        scratch = scratch_buffer(k * (cols.stop - start), x.device)
        out[:, cols] = torch.mm(x32, weight_t_block(cols, scratch))
    return out
