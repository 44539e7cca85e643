"""What ``vllm_modelslim.register()`` does with a supported vLLM: the plugin's hooks into vLLM."""

from __future__ import annotations

import logging

from vllm_modelslim.plugin.compressed_tensors import (
    register_compressed_tensors_config,
    register_cpu_linear_kernels,
)
from vllm_modelslim.plugin.norm_bias import register_rms_norm_bias
from vllm_modelslim.plugin.quant_config import register_quantization_methods


def register_plugin() -> None:
    """Register ``ascend``/``modelslim``, the bias-capable RMSNorm and, on CPU, the compressed-tensors hooks.

    None of them changes a model that does not use them: the RMSNorm
    replacement builds vLLM's own ``RMSNorm`` unless a ModelSlim checkpoint
    with norm biases is being loaded, and the compressed-tensors hooks act on
    CPU platforms only (:mod:`~vllm_modelslim.plugin.compressed_tensors.registration`).
    Idempotent.
    """
    share_vllm_log_handlers()
    register_quantization_methods()
    register_rms_norm_bias()
    register_cpu_linear_kernels()
    register_compressed_tensors_config()


class _ToVllmLogger(logging.Handler):
    """Hands each record to the ``vllm`` logger's own handlers, as configured at that moment.

    Only its handlers, not its parents, and none that the root logger also
    has: the record still propagates from the plugin's logger to the root
    logger as usual, so no handler sees it twice (test harnesses attach the
    same capture handler to both).
    """

    def emit(self, record: logging.LogRecord) -> None:
        reached_by_propagation = set(logging.getLogger().handlers)
        for handler in logging.getLogger("vllm").handlers:
            if handler not in reached_by_propagation and record.levelno >= handler.level:
                handler.handle(record)


def share_vllm_log_handlers() -> None:
    """Show the ``vllm_modelslim`` loggers' records where vLLM shows its own.

    vLLM configures handlers (format, stream, ``VLLM_LOGGING_LEVEL``) for its
    ``vllm`` logger only; without this, the plugin's info lines (the kernel
    chosen per scheme, the C8 cache path) would be dropped. The plugin's logger
    gets a handler that passes records to vLLM's handlers, and level INFO
    unless the user set one. Idempotent.
    """
    ours = logging.getLogger("vllm_modelslim")
    if not any(isinstance(h, _ToVllmLogger) for h in ours.handlers):
        ours.addHandler(_ToVllmLogger())
    if ours.level == logging.NOTSET:
        ours.setLevel(logging.INFO)
