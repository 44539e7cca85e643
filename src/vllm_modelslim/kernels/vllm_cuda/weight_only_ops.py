"""vLLM's weight-only CUDA ops (Machete, Marlin) called across vLLM versions, without vLLM's Python code.

The raw ops ``torch.ops._C.*`` are found by :func:`vllm_cuda_op`. Their
schemas differ between the vLLM releases this project meets:

* vLLM 0.26 (the build that loads on the H200's torch 2.11): ``marlin_gemm``
  takes ``g_idx_or_none``, ``perm_or_none`` and ``is_k_full`` (act-order
  GPTQ), and ``gptq_marlin_repack`` a ``perm`` tensor;
* vLLM 0.32 (installed here): both are gone.

Rather than hard-code one release, :func:`marlin_gemm` and
:func:`gptq_marlin_repack` read the op's schema once and fill the extra
arguments with their "no act-order" values (empty tensors, ``is_k_full=True``),
as vLLM 0.26's own ``apply_gptq_marlin_linear`` does. ``machete_mm`` and
``machete_prepack_B`` have the same schema in both.

Quantized types are passed as vLLM ``ScalarType`` ids, computed here with
vLLM's bit layout (``vllm/scalar_type.py``, ``ScalarType.id``: exponent 8
bits, mantissa 8, signed 1, bias 32, finite-only 1, NaN representation 8;
unsigned integers have exponent 0, mantissa = bits, IEEE NaN repr = 1).
Nothing here runs at import time.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from vllm_modelslim.kernels.vllm_cuda.ops import vllm_cuda_op

MARLIN_OPS = ("marlin_gemm", "gptq_marlin_repack")
MACHETE_OPS = ("machete_mm", "machete_prepack_B")
_NAN_REPR_IEEE_754 = 1


def uint_scalar_type_id(bits: int, bias: int) -> int:
    """The id of vLLM's ``ScalarType.uint(bits, bias)``: ``uint4b8`` is (4, 8), ``uint8b128`` (8, 128)."""
    return (bits << 8) | (bias << 17) | (_NAN_REPR_IEEE_754 << 50)


def weight_type_id(bits: int, zero_points: bool) -> int:
    """The type id of a weight stored as ``u = q + 2^(bits−1)``.

    With zero points the kernel subtracts them from ``u`` itself (``uint4``,
    ``uint8``); without, the type's bias does it (``uint4b8``, ``uint8b128``).
    """
    return uint_scalar_type_id(bits, 0 if zero_points else 1 << (bits - 1))


def _op(name: str) -> Any:
    op = vllm_cuda_op(name)
    if op is None:
        raise RuntimeError(f"vLLM op {name} is not registered")
    return op


@functools.cache
def _argument_names(name: str) -> tuple[str, ...]:
    op = _op(name)
    packet = op.default if hasattr(op, "default") else op
    return tuple(argument.name for argument in packet._schema.arguments)


def call_by_name(name: str, values: dict[str, Any], defaults: dict[str, Any]) -> Any:
    """Call ``torch.ops._C.<name>`` with each schema argument from ``values``, else ``defaults``.

    Raises:
        RuntimeError: the op is missing, or its schema has an argument in neither dict.
    """
    names = _argument_names(name)
    unknown = [n for n in names if n not in values and n not in defaults]
    if unknown:
        raise RuntimeError(f"vLLM op {name} has arguments this project does not know: {unknown}")
    return _op(name)(*(values[n] if n in values else defaults[n] for n in names))


_MARLIN_GEMM_ARGUMENTS = frozenset(
    (
        "a c_or_none b_q_weight b_bias_or_none b_scales a_scales global_scale b_zeros_or_none "
        "g_idx_or_none perm_or_none workspace b_type_id size_m size_n size_k is_k_full "
        "use_atomic_add use_fp32_reduce is_zp_float"
    ).split()
)
_EXPECTED_SCHEMAS: dict[str, frozenset[str] | tuple[str, ...]] = {
    # called by name: any order, any subset of these
    "marlin_gemm": _MARLIN_GEMM_ARGUMENTS,
    "gptq_marlin_repack": frozenset("b_q_weight perm size_k size_n num_bits is_a_8bit".split()),
    # called positionally: exactly these, in this order (vLLM 0.26 and 0.32)
    "machete_mm": tuple(
        "A B b_type out_type group_scales group_zeros group_size channel_scales token_scales schedule".split()
    ),
    "machete_prepack_B": ("B", "a_type", "b_type", "group_scales_type"),
}


def schema_mismatch_reason(*names: str) -> str | None:
    """Why the registered ops ``names`` do not take the arguments this module passes, or None.

    Call only once the ops are known to be registered.
    """
    for name in names:
        expected = _EXPECTED_SCHEMAS[name]
        found = _argument_names(name)
        if isinstance(expected, tuple) and found != expected:
            return f"vLLM op {name} has arguments {found}, expected {expected}"
        if isinstance(expected, frozenset) and not expected.issuperset(found):
            return f"vLLM op {name} has unknown arguments {sorted(set(found) - expected)}"
    return None


def _no_act_order(device: torch.device) -> dict[str, Any]:
    empty = torch.empty(0, dtype=torch.int32, device=device)
    return {"perm": empty, "g_idx_or_none": empty, "perm_or_none": empty, "is_k_full": True}


def gptq_marlin_repack(words: torch.Tensor, size_k: int, size_n: int, bits: int) -> torch.Tensor:
    """GPTQ words int32 ``[K/p, N]`` (on the GPU) → Marlin's tiled layout (``gptq_marlin_repack``)."""
    values = {"b_q_weight": words, "size_k": size_k, "size_n": size_n, "num_bits": bits, "is_a_8bit": False}
    return call_by_name("gptq_marlin_repack", values, _no_act_order(words.device))


def marlin_workspace(device: torch.device, size_n: int) -> torch.Tensor:
    """Zeroed int32 locks for ``marlin_gemm`` (the kernel resets them after each call).

    The largest size any vLLM release asks for: 4 per SM (0.32's
    ``MARLIN_MAX_BLOCKS_PER_SM``; 0.26 uses 1 per SM), or the older
    ``N / 64 · 16`` of GPTQ-Marlin.
    """
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return torch.zeros(max(4 * sms, size_n // 64 * 16), dtype=torch.int32, device=device)


def marlin_gemm(
    x: torch.Tensor,
    packed_weight: torch.Tensor,
    scales: torch.Tensor,
    zero_points: torch.Tensor,
    workspace: torch.Tensor,
    type_id: int,
    size_n: int,
    size_k: int,
) -> torch.Tensor:
    """``x [M, K] @ Wᵀ`` in ``x.dtype`` with ``W`` from Marlin's layout (``marlin_gemm``, fp32 reduction).

    ``zero_points`` is an empty int32 tensor for types without zero points.
    """
    values = {
        "a": x,
        "c_or_none": None,
        "b_q_weight": packed_weight,
        "b_bias_or_none": None,
        "b_scales": scales,
        "a_scales": None,
        "global_scale": None,
        "b_zeros_or_none": zero_points,
        "workspace": workspace,
        "b_type_id": type_id,
        "size_m": x.shape[0],
        "size_n": size_n,
        "size_k": size_k,
        "use_atomic_add": False,
        "use_fp32_reduce": True,
        "is_zp_float": False,
    }
    return call_by_name("marlin_gemm", values, _no_act_order(x.device))


def machete_prepack_b(words: torch.Tensor, act_dtype: torch.dtype, type_id: int) -> torch.Tensor:
    """GPTQ words int32 ``[K/p, N]`` → Machete's prepacked layout (``machete_prepack_B``)."""
    return _op("machete_prepack_B")(words.t().contiguous().t(), act_dtype, type_id, act_dtype)


def machete_mm(
    x: torch.Tensor,
    prepacked: torch.Tensor,
    type_id: int,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    group_size: int,
) -> torch.Tensor:
    """``x [M, K] @ Wᵀ`` in ``x.dtype``, ``W = u·s + zeros`` per K-group (``group_size`` −1: per channel)."""
    return _op("machete_mm")(x, prepacked, type_id, None, scales, zeros, group_size, None, None, None)
