"""vLLM's compiled CUDA ops (``torch.ops._C.*``, ``torch.ops._moe_C.*``): finding them, and why not.

The ops come from one of two places, tried lazily on the first lookup (never
at import time, so importing this module imports neither vLLM nor CUDA):

1. the op libraries named in ``VLLM_MODELSLIM_VLLM_C_LIBRARY`` (paths joined
   by ``os.pathsep``), loaded with ``torch.ops.load_library``: for a GPU
   machine that has vLLM's ``_C_stable_libtorch.abi3.so`` (and
   ``_moe_C_...so``) matching its torch, but not vLLM itself;
2. otherwise ``import vllm._custom_ops``, which loads the libraries of an
   installed CUDA build of vLLM.

The raw ops take preallocated outputs; their Python-level wrappers in vLLM
differ between versions, so kernels call the raw ops through this module
(see :mod:`vllm_modelslim.kernels.vllm_cuda.int8_ops` for the int8 GEMM and
quantization calls, checked against vLLM 0.26.0 and 0.32.0).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("vllm_modelslim.kernels")

LIBRARY_ENV = "VLLM_MODELSLIM_VLLM_C_LIBRARY"
"""Environment variable: paths of vLLM op libraries to load (``os.pathsep``-separated)."""

NAMESPACES = ("_C", "_moe_C")
"""Torch op namespaces of vLLM's compiled ops, searched in this order."""

_lock = threading.Lock()
_loaded = False
_load_errors: list[str] = []


def _load_ops_once() -> None:
    """Load vLLM's op libraries (from ``LIBRARY_ENV``, else through ``vllm._custom_ops``), once."""
    global _loaded
    with _lock:
        if _loaded:
            return
        _loaded = True
        import torch

        paths = [p for p in os.environ.get(LIBRARY_ENV, "").split(os.pathsep) if p.strip()]
        for path in paths:
            try:
                torch.ops.load_library(path)
            except (OSError, RuntimeError) as exc:
                _load_errors.append(f"{LIBRARY_ENV} library {path} did not load: {exc}")
        if paths:
            return
        try:
            import vllm._custom_ops  # noqa: F401  (registers torch.ops._C / _moe_C)
        except Exception as exc:  # ImportError, or a vLLM build that fails to load its libraries
            _load_errors.append(f"import vllm._custom_ops failed: {type(exc).__name__}: {exc}")


def _registered(namespace: str, name: str) -> Callable[..., Any] | None:
    import torch

    try:
        return getattr(getattr(torch.ops, namespace), name)
    except (AttributeError, RuntimeError):
        return None


def vllm_cuda_op(name: str) -> Callable[..., Any] | None:
    """The compiled op ``torch.ops._C.<name>`` (or ``torch.ops._moe_C.<name>``), None when not registered.

    Loads vLLM's op libraries on the first call (see the module docstring). A
    registered op may still lack a CUDA kernel (a CPU build of vLLM registers
    some of the same names): check :func:`vllm_cuda_unavailable_reason` first.

    Args:
        name: the op's name without namespace, e.g. ``"cutlass_scaled_mm"``.
    """
    for namespace in NAMESPACES:
        op = _registered(namespace, name)
        if op is not None:
            return op
    _load_ops_once()
    for namespace in NAMESPACES:
        op = _registered(namespace, name)
        if op is not None:
            return op
    return None


def cuda_capability() -> int | None:
    """Compute capability of the current CUDA device (``major * 10 + minor``, 90: H200); None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return major * 10 + minor


def _op_has_cuda_kernel(op: Callable[..., Any]) -> bool:
    """Whether the op overload has a CUDA kernel registered (a CPU build of vLLM has none)."""
    import torch

    try:
        packet = op.default if hasattr(op, "default") else op
        return torch._C._dispatch_has_kernel_for_dispatch_key(packet.name(), "CUDA")
    except (AttributeError, RuntimeError):
        return True  # cannot tell: let the call decide


def vllm_cuda_unavailable_reason(*names: str, min_capability: int = 0) -> str | None:
    """Why vLLM's CUDA ops ``names`` cannot run here, or None when they all can.

    Checked in order: CUDA present, compute capability ``>= min_capability``
    (``major * 10 + minor``), each op registered (after loading the libraries)
    and registered with a CUDA kernel.

    Args:
        names: op names without namespace.
        min_capability: the lowest compute capability the caller's kernels need (0: any).
    """
    capability = cuda_capability()
    if capability is None:
        return "no CUDA device"
    if capability < min_capability:
        have, need = f"{capability // 10}.{capability % 10}", f"{min_capability // 10}.{min_capability % 10}"
        return f"compute capability {have} < {need}"
    missing = [name for name in names if vllm_cuda_op(name) is None]
    if missing:
        detail = (
            "; ".join(_load_errors)
            if _load_errors
            else (
                f"loaded libraries do not register them (set {LIBRARY_ENV} or install a CUDA build of vLLM)"
            )
        )
        return f"vLLM op(s) {', '.join(missing)} not registered ({detail})"
    no_cuda = [name for name in names if not _op_has_cuda_kernel(vllm_cuda_op(name))]
    if no_cuda:
        return f"vLLM op(s) {', '.join(no_cuda)} have no CUDA kernel (a CPU build of vLLM?)"
    return None
