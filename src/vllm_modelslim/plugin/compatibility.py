"""Which vLLM versions this plugin supports, and what it registers when it cannot run.

The plugin touches vLLM internals (kernel lists, parameter classes, the CPU
attention backend), so it declares the vLLM releases it was built and tested
against. vLLM calls every installed plugin's ``register()`` in every process
it starts, for every model: an exception there would stop vLLM for users who
never asked for this plugin. So an unsupported version, or any import error
of this package against the installed vLLM, is logged once and turned into a
placeholder quantization method: ``--quantization ascend`` then fails with
that message, and everything else runs as if the plugin were absent.

This module imports vLLM only inside functions.
"""

from __future__ import annotations

import logging
from typing import Any

QUANTIZATION_METHOD_NAMES = ("ascend", "modelslim")
"""Names accepted by ``--quantization`` (``ascend`` as in vLLM Ascend's docs)."""

SUPPORTED_VLLM = ">=0.32.0,<0.33"
"""The vLLM versions this plugin supports (PEP 440 specifier; pyproject's ``vllm``/``cpu`` extras agree)."""

logger = logging.getLogger("vllm_modelslim")


def vllm_version_problem(version: str | None = None) -> str | None:
    """Why the installed vLLM (or ``version``) is unsupported; None when it is supported.

    Local version labels (``0.32.0+cpu``) are ignored.
    """
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    if version is None:
        import vllm

        version = getattr(vllm, "__version__", "unknown")
    try:
        parsed = Version(version)
    except InvalidVersion:
        return f"vLLM reports version {version!r}, which is not a version number"
    if Version(parsed.public) not in SpecifierSet(SUPPORTED_VLLM):
        return f"vLLM {version} is installed"
    return None


def unavailable_message(problem: str) -> str:
    """The one error text for a plugin that cannot run (logged, and raised by the placeholder)."""
    return (
        f"vllm-modelslim is disabled: {problem}; it supports vLLM {SUPPORTED_VLLM}. "
        "Install a supported vLLM (or a vllm-modelslim release for yours) to serve ModelSlim "
        "checkpoints; other models are unaffected."
    )


def register_unavailable(names: tuple[str, ...], message: str) -> bool:
    """Register a placeholder config under ``names`` whose use raises ``message``.

    Returns:
        True when registered; False when even vLLM's registration hook is
        unavailable (the message is then only logged).
    """
    try:
        from vllm.model_executor.layers.quantization import register_quantization_config
        from vllm.model_executor.layers.quantization.base_config import QuantizationConfig
    except Exception:  # noqa: BLE001 - a broken vLLM install: nothing can be registered
        return False

    class ModelSlimUnavailableConfig(QuantizationConfig):
        """Placeholder: the plugin cannot run with this vLLM; any use raises why."""

        def __init__(self, *args: Any, **kwargs: Any):
            raise RuntimeError(message)

        @classmethod
        def from_config(cls, config: dict[str, Any]) -> ModelSlimUnavailableConfig:
            raise RuntimeError(message)

        @staticmethod
        def get_config_filenames() -> list[str]:
            return []

        @classmethod
        def get_min_capability(cls) -> int:
            raise RuntimeError(message)

        def get_name(self) -> str:  # type: ignore[override]
            return names[0]

        def get_supported_act_dtypes(self) -> list:
            return []

        def get_quant_method(self, layer: Any, prefix: str) -> None:
            return None

    try:
        for name in names:
            register_quantization_config(name)(ModelSlimUnavailableConfig)
    except Exception:  # noqa: BLE001
        return False
    return True
