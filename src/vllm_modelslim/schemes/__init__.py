"""Schemes layer: one class per (quant type, layer type), registered by decorator.

A scheme knows the on-disk tensors of its quant type (declared once, used both
to create vLLM parameters and to validate the checkpoint), turns them into a
kernel's layout after loading, and runs the kernel.
"""

from vllm_modelslim.schemes import attention as _attention  # noqa: F401  (registers the schemes)
from vllm_modelslim.schemes import linear as _linear  # noqa: F401  (registers the schemes)
from vllm_modelslim.schemes import moe as _moe  # noqa: F401  (registers the schemes)
from vllm_modelslim.schemes.base import LayerContext, LinearScheme
from vllm_modelslim.schemes.registry import (
    get_scheme_class,
    register_scheme,
    registered_quant_types,
    require_scheme_class,
)

__all__ = [
    "LayerContext",
    "LinearScheme",
    "get_scheme_class",
    "register_scheme",
    "registered_quant_types",
    "require_scheme_class",
]
