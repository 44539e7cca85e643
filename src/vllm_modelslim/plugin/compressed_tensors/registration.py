"""Hook this project into vLLM's compressed-tensors path: kernel lists and the config class.

Kernels: put this project's linear kernels first in vLLM's CPU kernel lists.

vLLM's documented hook ``register_linear_kernel`` appends a kernel to a
platform's list, which would leave vLLM's own CPU kernels in front; the
adapters are then moved to the front of that list. This module is the only
place that touches vLLM's kernel lists (``tests/unit/test_compressed_tensors_kernels.py``
fails if their names or structure change). Both hooks act on CPU platforms
only: elsewhere vLLM's own compressed-tensors path is left as it is.
"""

from __future__ import annotations

import vllm.model_executor.kernels.linear as linear_kernels
from vllm.model_executor.layers.quantization import register_quantization_config
from vllm.platforms import PlatformEnum, current_platform

from vllm_modelslim.plugin.compressed_tensors.config import VLLM_NAME, CompressedTensorsCpuConfig
from vllm_modelslim.plugin.compressed_tensors.int8_linear_kernel import ModelSlimInt8ScaledMMLinearKernel
from vllm_modelslim.plugin.compressed_tensors.wna16_linear_kernel import ModelSlimWNA16LinearKernel


def register_cpu_linear_kernels() -> bool:
    """Put this project's int8 and mixed-precision linear kernels first in vLLM's CPU lists.

    Idempotent. Whether they then run is decided per layer by their
    ``is_supported`` / ``can_implement`` (:func:`~.kernel_choice.kernel_mode`).

    Returns:
        False (and nothing changed) on a platform other than CPU.
    """
    if not current_platform.is_cpu():
        return False
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
    """On CPU, register :class:`CompressedTensorsCpuConfig` under vLLM's name ``compressed-tensors``.

    vLLM's ``register_quantization_config`` lets a plugin replace a built-in
    method; detection from config.json is unchanged. Only CPU needs it (vLLM
    has no CPU backend for compressed-tensors MoE experts).

    Returns:
        False (and nothing changed) on a platform other than CPU.
    """
    if not current_platform.is_cpu():
        return False
    register_quantization_config(VLLM_NAME)(CompressedTensorsCpuConfig)
    return True
