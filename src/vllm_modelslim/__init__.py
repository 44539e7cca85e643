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

    On CPU it also serves LLM-Compressor (compressed-tensors) checkpoints, which
    vLLM detects itself (no flag): this project's exact int8 / weight-only
    kernels go first in vLLM's CPU kernel lists (each layer still takes vLLM's
    own where that is exact), and MoE experts run the ModelSlim MoE schemes.

    Never raises: vLLM calls it in every process it starts, for every model. An
    unsupported vLLM version or an import error against the installed vLLM is
    logged once (naming the supported range) and ``--quantization ascend`` then
    fails with that message (:mod:`vllm_modelslim.plugin.compatibility`).
    Safe to call more than once.
    """
    from vllm_modelslim.plugin.compatibility import (
        QUANTIZATION_METHOD_NAMES,
        logger,
        register_unavailable,
        unavailable_message,
        vllm_version_problem,
    )

    try:
        problem = vllm_version_problem()
        if problem is None:
            from vllm_modelslim.plugin.registration import register_plugin

            register_plugin()
            return
    except Exception as exc:  # noqa: BLE001 - must not stop vLLM for unrelated models
        problem = f"it failed to load against the installed vLLM ({type(exc).__name__}: {exc})"
    message = unavailable_message(problem)
    logger.error(message)
    register_unavailable(QUANTIZATION_METHOD_NAMES, message)
