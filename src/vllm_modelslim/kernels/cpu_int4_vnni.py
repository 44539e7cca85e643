"""The project's own int4-weight CPU kernels (``kernels/csrc/int4_vnni.cpp``): build, ops, packing.

Two ops, compiled on first use (:mod:`~vllm_modelslim.kernels.cpp_extension`)
and registered with torch's dispatcher from C++ (opaque to torch.compile,
which traces them through the fake implementations registered here):

* ``vllm_modelslim::int4_vnni_linear``: per-token int8/int4 quantization of
  ``x`` and its product with an int4 weight, one call per layer
  (:class:`~vllm_modelslim.kernels.dynamic_int8_linear.int4_vnni.Int4VnniLinear`);
* ``vllm_modelslim::int4_vnni_moe``: a MoE layer's routed int4 experts
  (:class:`~vllm_modelslim.kernels.fused_int8_experts.Int4VnniFusedExperts`).

Both multiply the int4 weights, stored two per byte, by integer activations
with AVX-512 VNNI ``vpdpbusd`` (unsigned ``q + 8`` nibbles × signed activation
bytes; the ``8·Σ x_q`` excess is subtracted per row, so the int32 sums are
exact). They need AVX512F/BW/VL and AVX512-VNNI (Intel from Cascade Lake, AMD
from Zen 4, every AMX CPU) and a C++ compiler for the first build.
"""

from __future__ import annotations

import torch

from vllm_modelslim.kernels.cpp_extension import (
    CompiledCpuOpsMixin,
    isa_reason,
    load_cpu_ops,
    require_cpu_ops,
)

SOURCE = "int4_vnni.cpp"
CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_vnni")
"""x86 flags the compiled code executes."""
COMPILER_FLAGS = ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni")
TILE_N = 16
"""Output channels per weight tile (one AVX-512 register of int32 sums)."""
BLOCK_K = 8
"""Inputs per 64-byte weight block (two nibbles per byte, four inputs per VNNI lane)."""


def extension_unavailable() -> str | None:
    """Why the compiled ops cannot be had (build or load failure), or None once they are registered.

    On success the ops' fake (shape-only) implementations are registered too,
    so torch.compile can trace them. Built and loaded once per process.
    """
    fakes = {"vllm_modelslim::int4_vnni_linear": _linear_fake, "vllm_modelslim::int4_vnni_moe": _moe_fake}
    return load_cpu_ops(SOURCE, COMPILER_FLAGS, fakes)


def int4_vnni_isa_reason(device_type: str) -> str | None:
    """Why the ops' code cannot execute on ``device_type`` here (not a CPU, ISA flags missing), or None."""
    return isa_reason(device_type, CPU_FLAGS)


def int4_vnni_unavailable(device_type: str = "cpu") -> str | None:
    """Why the ops cannot run on ``device_type`` here: the ISA first, then the build; None when they can."""
    return int4_vnni_isa_reason(device_type) or extension_unavailable()


def require_int4_vnni_ops() -> None:
    """Load the ops (kernels call this when built).

    Raises:
        RuntimeError: they cannot be built or loaded here (the reason).
    """
    require_cpu_ops(extension_unavailable())


def _linear_fake(x, weight_packed, weight_scale, bias, qmax):
    """Shape of ``int4_vnni_linear``: ``[M, N]`` in ``x.dtype``.

    Arguments: ``x`` ``[M, K]`` bf16/float32, ``weight_packed`` uint8 ``[N/16, K/8, 64]``,
    ``weight_scale`` float32 ``[N]``, ``bias`` float32 ``[N]`` or None, ``qmax`` 127 or 7.
    """
    return x.new_empty((x.shape[0], weight_packed.shape[0] * TILE_N))


def _moe_fake(x, w13_packed, w13_scale, w2_packed, w2_scale, topk_weights, topk_ids, qmax):
    """Shape of ``int4_vnni_moe``: ``[T, H]`` in ``x.dtype``.

    Arguments: ``x`` ``[T, H]`` bf16, ``w13_packed`` uint8 ``[E, 2I/16, H/8, 64]`` (gate rows
    then up rows), ``w13_scale`` float32 ``[E, 2I]``, ``w2_packed`` uint8 ``[E, H/16, I/8, 64]``,
    ``w2_scale`` float32 ``[E, H]``, ``topk_weights`` float32 and ``topk_ids`` int64 ``[T, k]``, ``qmax``.
    """
    return torch.empty_like(x)


def pack_int4_vnni(weight: torch.Tensor) -> torch.Tensor:
    """int4 values ``q`` ``[..., N, K]`` (int8 holding [−8, 7]) → the ops' uint8 ``[..., N/16, K/8, 64]``.

    Byte ``(tile, kb, j, t)`` holds ``u = q + 8`` of channel ``16·tile + j`` at
    ``k = 8·kb + t`` in its low nibble and at ``k = 8·kb + 4 + t`` in its high one.

    Raises:
        ValueError: N or K is not a multiple of 16 or 8, or a value is outside [−8, 7].
    """
    *lead, n, k = weight.shape
    if n % TILE_N or k % BLOCK_K:
        raise ValueError(f"int4 VNNI packing needs N % {TILE_N} == 0 and K % {BLOCK_K} == 0, got {n} × {k}")
    if weight.numel() and (int(weight.min()) < -8 or int(weight.max()) > 7):
        raise ValueError("int4 VNNI packing needs weight values in [-8, 7]")
    unsigned = (weight.to(torch.int16) + 8).to(torch.uint8)
    blocks = unsigned.reshape(-1, n // TILE_N, TILE_N, k // BLOCK_K, 2, 4).permute(0, 1, 3, 2, 4, 5)
    packed = blocks[..., 0, :] | (blocks[..., 1, :] << 4)
    return packed.reshape(*lead, n // TILE_N, k // BLOCK_K, 64).contiguous()


class CpuInt4VnniMixin(CompiledCpuOpsMixin):
    """:class:`~vllm_modelslim.kernels.cpp_extension.CompiledCpuOpsMixin` for these ops.

    They keep the weight (packed int4) and its scales in their own layout.
    """

    cpu_flags = CPU_FLAGS
    ops_unavailable = staticmethod(extension_unavailable)
    copies_weight = True
    copies_scales = True
