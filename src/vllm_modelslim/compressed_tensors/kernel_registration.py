"""Hook this project into vLLM's compressed-tensors path: kernel lists and the config class.

Kernels: put this project's linear kernels first in vLLM's CPU kernel lists.

vLLM's documented hook ``register_linear_kernel`` appends a kernel to a
platform's list, which would leave vLLM's own CPU kernels in front; the
adapters are then moved to the front of that list. This module is the only
place that touches vLLM's kernel lists (``tests/unit/test_compressed_tensors_kernels.py``
fails if their names or structure change).
"""

from __future__ import annotations

import os

DISABLE_ENV = "VLLM_MODELSLIM_CT_KERNELS"
"""Set to ``0`` to leave vLLM's own CPU kernels in charge (to compare against vLLM's default path)."""


def register_cpu_linear_kernels() -> bool:
    """Make vLLM's int8 and mixed-precision linear schemes use this project's kernels on CPU.

    Idempotent. Returns False (and changes nothing) when :data:`DISABLE_ENV` is ``0``.
    """
    if os.environ.get(DISABLE_ENV, "1") == "0":
        return False
    import vllm.model_executor.kernels.linear as linear_kernels
    from vllm.platforms import PlatformEnum

    from vllm_modelslim.compressed_tensors.int8_linear_kernel import ModelSlimInt8ScaledMMLinearKernel
    from vllm_modelslim.compressed_tensors.wna16_linear_kernel import ModelSlimWNA16LinearKernel

    for kernel, kind, table in (
        (ModelSlimInt8ScaledMMLinearKernel, "int8", linear_kernels._POSSIBLE_INT8_KERNELS),
        (ModelSlimWNA16LinearKernel, "mp", linear_kernels._POSSIBLE_KERNELS),
    ):
        cpu_kernels = table.get(PlatformEnum.CPU, [])
        if kernel not in cpu_kernels:
            linear_kernels.register_linear_kernel(kernel, PlatformEnum.CPU, kind)
        cpu_kernels = table[PlatformEnum.CPU]
        cpu_kernels.remove(kernel)
        cpu_kernels.insert(0, kernel)
    return True


def register_compressed_tensors_config() -> bool:
    """Register :class:`CompressedTensorsCpuConfig` under vLLM's name ``compressed-tensors``.

    vLLM's ``register_quantization_config`` lets a plugin replace a built-in
    method; detection from config.json is unchanged. Returns False (and
    changes nothing) when :data:`DISABLE_ENV` is ``0``.
    """
    if os.environ.get(DISABLE_ENV, "1") == "0":
        return False
    from vllm.model_executor.layers.quantization import register_quantization_config

    from vllm_modelslim.compressed_tensors.config import VLLM_NAME, CompressedTensorsCpuConfig

    register_quantization_config(VLLM_NAME)(CompressedTensorsCpuConfig)
    return True
