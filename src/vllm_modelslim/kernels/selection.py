"""Kernel selection: the first kernel of a priority list that fits, logged and steerable.

A kernel fits when this platform supports it and it can implement the requested
math (the two-question interface of vLLM's ``scaled_mm`` kernels), and the user
has not disabled it. Each family registers its priority list with
:func:`priority_list`; every list ends with a plain-torch reference kernel that
always fits and cannot be disabled.

The choice is logged once per distinct (purpose, chosen kernel), at info level
on the ``vllm_modelslim.kernels`` logger, with the reason each higher-priority
kernel was skipped (one line; a scheme may put its label before the family's purpose;
kernels built only for other device types, ``QuantKernel.device_types``, are left out)::

    Selected kernel dequant_matmul for W8A16 (weight-only int8 GEMM, per-channel scales);
    skipped: cpu_int8pack (slow for torch.float32 activations)

``VLLM_MODELSLIM_DISABLED_KERNELS`` (kernel ``name`` attributes, comma
separated, read at every selection) removes kernels from the lists.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Protocol, TypeVar

from vllm_modelslim.kernels.base import QuantKernel

logger = logging.getLogger("vllm_modelslim.kernels")

DISABLED_KERNELS_ENV = "VLLM_MODELSLIM_DISABLED_KERNELS"
"""Environment variable: comma-separated kernel names that selection skips."""

DISABLED_REASON = f"disabled by {DISABLED_KERNELS_ENV}"


class _Config(Protocol):
    device_type: str


K = TypeVar("K", bound=type[QuantKernel])

_PRIORITY_LISTS: list[list[type[QuantKernel]]] = []
_LOGGED: set[tuple[str, str]] = set()


def priority_list(*kernels: K) -> list[K]:
    """Register and return a family's priority list (fastest first, a reference kernel last).

    The registered lists give :func:`disabled_kernels` the valid kernel names.

    Raises:
        ValueError: the list is empty.
    """
    if not kernels:
        raise ValueError("a priority list needs at least its reference kernel")
    kernels_list = list(kernels)
    _PRIORITY_LISTS.append(kernels_list)
    return kernels_list


def disabled_kernels() -> frozenset[str]:
    """Kernel names listed in ``VLLM_MODELSLIM_DISABLED_KERNELS`` (read now), checked.

    Raises:
        ValueError: a name is the reference kernel that ends a priority list
            (it is the one kernel that always fits), or no registered kernel
            has that name (the message lists the valid names).
    """
    names = {n.strip() for n in os.environ.get(DISABLED_KERNELS_ENV, "").split(",") if n.strip()}
    if not names:
        return frozenset()
    final = {kernels[-1].name for kernels in _PRIORITY_LISTS}
    valid = {k.name for kernels in _PRIORITY_LISTS for k in kernels[:-1]} - final
    if names & final:
        raise ValueError(
            f"{DISABLED_KERNELS_ENV} may not disable {sorted(names & final)}: the reference kernel "
            "that ends every priority list is the one that always runs"
        )
    if names - valid:
        raise ValueError(
            f"{DISABLED_KERNELS_ENV} names unknown kernels {sorted(names - valid)}; "
            f"valid names: {', '.join(sorted(valid))}"
        )
    return frozenset(names)


def choose_kernel(
    candidates: Sequence[K],
    config: _Config,
    purpose: str | None = None,
    *,
    forced: K | None = None,
) -> K:
    """First kernel class of ``candidates`` that supports the device and the config and is not disabled.

    Logs the choice (once per distinct ``purpose`` and chosen kernel) with the
    reason each kernel before it was skipped.

    Args:
        candidates: a priority list (see :func:`priority_list`).
        config: the family's config; ``config.device_type`` goes to ``is_supported``.
        purpose: what the kernel is for, for the log line (default: the config's type name).
        forced: use this kernel class (tests, benchmarks): no list, no
            ``VLLM_MODELSLIM_DISABLED_KERNELS``, no log line.

    Raises:
        ValueError: ``VLLM_MODELSLIM_DISABLED_KERNELS`` is invalid (see :func:`disabled_kernels`).
        RuntimeError: none qualifies (a forced kernel that cannot run this case;
            otherwise a bug, as the lists end with an always-valid reference
            kernel); the message gives each one's reason.
    """
    disabled = frozenset() if forced is not None else disabled_kernels()
    skipped = []
    for kernel in [forced] if forced is not None else candidates:
        other_device = kernel.device_types is not None and config.device_type not in kernel.device_types
        if other_device and forced is None:
            continue  # built for another device type: neither chosen nor worth a log entry
        if kernel.name in disabled:
            ok, why = False, DISABLED_REASON
        else:
            ok, why = kernel.is_supported(config.device_type)
            if ok:
                ok, why = kernel.can_implement(config)
        if ok:
            if forced is None:
                _log_choice(kernel, purpose or type(config).__name__, skipped)
            return kernel
        skipped.append(f"{kernel.name} ({why})")
    raise RuntimeError(f"no kernel can implement {config}: " + "; ".join(skipped))


def _log_choice(kernel: type[QuantKernel], purpose: str, skipped: list[str]) -> None:
    key = (purpose, kernel.name)
    if key in _LOGGED:
        return
    _LOGGED.add(key)
    skips = f"; skipped: {'; '.join(skipped)}" if skipped else ""
    logger.info("Selected kernel %s for %s%s", kernel.name, purpose, skips)
