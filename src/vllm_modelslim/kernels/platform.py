"""What the current host can do, as far as kernel selection cares."""

from __future__ import annotations

import functools
from pathlib import Path

INT8_DOT_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
"""CPU flags (x86 VNNI/AMX, Arm dot-product) that give native int8 dot products."""

BF16_DOT_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
"""x86 CPU flags that give native bf16 dot products (oneDNN's bf16 GEMM runs on them)."""


@functools.cache
def cpu_flags() -> frozenset[str]:
    """Feature flags of the first CPU in ``/proc/cpuinfo`` (empty when unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_has_int8_dot() -> bool:
    """True when the CPU multiplies int8 vectors natively (VNNI, AMX, Arm dot-product).

    Without it, int8 GEMMs in oneDNN/torch fall back to slow or 16-bit
    saturating paths, so kernel priorities change.
    """
    return any(flag in cpu_flags() for flag in INT8_DOT_CPU_FLAGS)


def cpu_has_amx_tiles() -> bool:
    """True when AMX tiles are usable (Sapphire Rapids and later, enabled by the OS).

    vLLM-CPU then routes symmetric int8 GEMMs to its AMX (SGL) kernels, whose
    accepted activation dtypes differ from its oneDNN path. The answer is
    torch's own runtime check, the one vLLM makes (``check_cpu_sgl_kernel``);
    the ``amx_tile`` CPU flag only where torch lacks it.
    """
    import torch

    is_amx_tile_supported = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if is_amx_tile_supported is not None:
        return bool(is_amx_tile_supported())
    return "amx_tile" in cpu_flags()


def cpu_has_native_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (x86 AVX512-BF16 or AMX-BF16).

    oneDNN's bf16 GEMM (behind ``torch.mm`` and vLLM-CPU's unquantized
    layers) then runs at about twice its float32 speed; without it oneDNN
    converts bf16 in software and the bf16 GEMM is several times slower than
    float32 (``benchmarks/kernels.py``). The answer is torch's own check
    (``torch.cpu._is_avx512_bf16_supported``, true on AMX CPUs too); the
    :data:`BF16_DOT_CPU_FLAGS` only where torch lacks it. Arm's bf16 extensions are not counted (unmeasured).
    """
    import torch

    is_avx512_bf16_supported = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if is_avx512_bf16_supported is not None:
        return bool(is_avx512_bf16_supported())
    return any(flag in cpu_flags() for flag in BF16_DOT_CPU_FLAGS)
