"""vllm-modelslim: serve Huawei ModelSlim (msmodelslim) quantized checkpoints on any vLLM platform.

vLLM loads this package through the ``vllm.general_plugins`` entry point and
calls :func:`register`, which adds the quantization methods ``ascend`` and
``modelslim``::

    vllm serve ./Qwen3-8B-W8A8 --quantization ascend
    LLM(model="./Qwen3-8B-W8A8", quantization="ascend")
"""

from __future__ import annotations

__version__ = "0.1.0"


def register() -> None:
    """VLLM general-plugin hook: register the ``ascend``/``modelslim`` quantization methods.

    It also serves LLM-Compressor (compressed-tensors) checkpoints on CPU, which
    vLLM detects itself (no flag): this project's exact int8 / weight-only
    kernels go first in vLLM's CPU kernel lists (used where vLLM's own are
    missing or inexact), and MoE experts run the ModelSlim MoE schemes.

    Safe to call more than once (vLLM calls it in every process it starts).
    """
    from vllm_modelslim.compressed_tensors import (
        register_compressed_tensors_config,
        register_cpu_linear_kernels,
    )
    from vllm_modelslim.format.quant_config import register_quantization_methods
    from vllm_modelslim.schemes.norm_bias import register_rms_norm_bias

    register_quantization_methods()
    register_rms_norm_bias()
    register_cpu_linear_kernels()
    register_compressed_tensors_config()
