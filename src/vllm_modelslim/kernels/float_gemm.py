"""Float GEMM over a weight dequantized block by block (the many-rows path of weight-only kernels).

Each block of output channels is dequantized into one scratch buffer that is
reused by every call and every layer: allocating a fresh float32 weight per
call costs more in page faults than the conversion itself (measured on 2
cores, K = N = 4096: int8 → float32 into a new tensor 30 ms, into an existing
one 4.6 ms).

The GEMM runs in bfloat16 where the CPU multiplies bf16 natively
(:func:`~vllm_modelslim.kernels.platform.cpu_has_native_bf16`: AVX512-BF16,
AMX) and the activations are bf16 — oneDNN's bf16 GEMM is then about twice
as fast as float32 and within a few per cent of vLLM's prepacked one — and
in float32 everywhere else (without native bf16, oneDNN's bf16 GEMM is
several times slower than float32). Measured with ``benchmarks/kernels.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from vllm_modelslim.kernels import platform as cpu_platform

BLOCK_COLUMNS = 512
"""Output channels dequantized per block (a [512, K] float32 block: 8 MiB at K = 4096)."""

_scratch: dict[tuple[torch.device, bool, torch.dtype], torch.Tensor] = {}


def scratch_buffer(numel: int, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A ``dtype`` buffer of at least ``numel`` elements, shared by every caller on ``device``.

    Its contents are only valid until the next call; it grows to the largest
    request seen (one block of the widest layer) and is never freed. One
    buffer is kept per inference-mode state and dtype: a tensor allocated
    under ``torch.inference_mode`` (as vLLM runs the model) cannot be written
    outside it, and the same process may run both.
    """
    key = (torch.device(device), torch.is_inference_mode_enabled(), dtype)
    buffer = _scratch.get(key)
    if buffer is None or buffer.numel() < numel:
        buffer = torch.empty(numel, dtype=dtype, device=device)
        _scratch[key] = buffer
    return buffer[:numel]


def many_rows_gemm_dtype(act_dtype: torch.dtype) -> torch.dtype:
    """The dtype of the many-rows GEMM for activations of ``act_dtype`` on this CPU.

    bfloat16 for bf16 activations on a CPU with native bf16 dot products
    (:func:`~vllm_modelslim.kernels.platform.cpu_has_native_bf16`), float32
    otherwise (fp16 activations included: fp16 GEMMs are not measured).
    """
    if act_dtype == torch.bfloat16 and cpu_platform.cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def panel_gemm_preferred() -> bool:
    """True where the weight-only kernels' own bf16 panel GEMM replaces dequantize + oneDNN's bf16 GEMM.

    That GEMM (``kernels/csrc/bf16_panel_gemm.h``) dequantizes the weight panel
    by panel in cache and multiplies with AVX512-BF16 ``vdpbf16ps``: at M = 512
    it ran at 0.95–0.97× of vLLM's prepacked oneDNN GEMM of the unquantized
    weight, where dequantize-by-blocks + torch's GEMM ran at 0.77–0.85×
    (2-core AMD EPYC with AVX512-BF16). On CPUs with AMX tiles oneDNN's bf16
    GEMM runs on the tiles, which ``vdpbf16ps`` cannot match, so there the
    blocks stay (not measured: no AMX host was available).
    """
    return not cpu_platform.cpu_has_amx_tiles()


def gemm_by_blocks(
    x: torch.Tensor,
    weight_t_block: Callable[[slice, torch.Tensor], torch.Tensor],
    out_features: int,
    dtype: torch.dtype = torch.float32,
    block: int = BLOCK_COLUMNS,
    epilogue: Callable[[torch.Tensor, slice], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``x · Wᵀ`` in ``dtype``, with ``Wᵀ`` dequantized one block of output channels at a time.

    Args:
        x: ``[M, K]``, any float dtype (converted to ``dtype``; exact for bf16
            to float32 and for bf16 to bf16).
        weight_t_block: ``(columns, scratch) -> Wᵀ[:, columns]``: a ``dtype``
            ``[K, len(columns)]`` tensor (any strides) for a ``slice`` of output
            channels, written into ``scratch`` (a flat ``dtype`` buffer of
            ``K · len(columns)`` elements, valid until the next block) or
            freshly allocated. No float copy of the whole weight ever exists.
        out_features: N.
        dtype: float32 or bfloat16 (:func:`many_rows_gemm_dtype`); torch's CPU
            GEMM accumulates bf16 products in float32 and rounds each output once.
        block: output channels per block.
        epilogue: ``(acc, columns) -> y`` applied to each block's ``[M, len(columns)]``
            accumulator while it is in cache (scales, bias); ``y`` (any float dtype)
            is rounded to ``x.dtype`` as it is copied into the output. Without it
            the accumulator itself is returned.

    Returns:
        ``[M, N]``: the epilogue's output in ``x.dtype``, else the accumulator in ``dtype``.
    """
    x_d = x.to(dtype)
    k = x.shape[-1]
    out_dtype = dtype if epilogue is None else x.dtype
    out = torch.empty(x.shape[0], out_features, dtype=out_dtype, device=x.device)
    for start in range(0, out_features, block):
        cols = slice(start, min(start + block, out_features))
        scratch = scratch_buffer(k * (cols.stop - start), x.device, dtype)
        acc = torch.mm(x_d, weight_t_block(cols, scratch))
        out[:, cols] = acc if epilogue is None else epilogue(acc, cols)
    return out


def float32_gemm_by_blocks(
    x: torch.Tensor,
    weight_t_block: Callable[[slice, torch.Tensor], torch.Tensor],
    out_features: int,
    block: int = BLOCK_COLUMNS,
) -> torch.Tensor:
    """:func:`gemm_by_blocks` in float32: float32 ``[M, N]``."""
    return gemm_by_blocks(x, weight_t_block, out_features, torch.float32, block)
