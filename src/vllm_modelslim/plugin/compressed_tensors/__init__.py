"""LLM-Compressor (compressed-tensors) checkpoints on CPU: vLLM's config and schemes, this project's kernels.

vLLM detects these checkpoints itself (``quantization_config.quant_method ==
"compressed-tensors"`` in config.json; no ``--quantization`` flag), parses
them with its ``CompressedTensorsConfig`` and creates and loads their
parameters with its schemes. The schemes pick their GEMM from vLLM's
per-platform kernel lists; :func:`register_cpu_linear_kernels` puts the
adapters of this module first in the CPU lists, and they accept a layer
where vLLM's own CPU kernel is missing or inexact (:data:`KERNELS_ENV`):
its int8 path without VNNI/AMX, its int4 kernel in AVX2 builds. There the
forward runs the same exact kernels as the ModelSlim schemes (int32
accumulation, then the scales). MoE experts, for which vLLM
has no CPU backend, go to the ModelSlim MoE schemes through
:class:`~vllm_modelslim.plugin.compressed_tensors.config.CompressedTensorsCpuConfig`,
registered under vLLM's own name ``compressed-tensors``.
"""

from vllm_modelslim.plugin.compressed_tensors.kernel_choice import KERNELS_ENV, kernel_mode
from vllm_modelslim.plugin.compressed_tensors.registration import (
    register_compressed_tensors_config,
    register_cpu_linear_kernels,
)

__all__ = ["KERNELS_ENV", "kernel_mode", "register_compressed_tensors_config", "register_cpu_linear_kernels"]
