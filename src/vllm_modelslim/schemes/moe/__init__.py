"""MoE schemes (routed experts of a ``FusedMoE`` layer), registered as ``(quant_type, "moe")``."""

from vllm_modelslim.schemes.moe import schemes as _schemes  # noqa: F401  (registers the schemes)
from vllm_modelslim.schemes.moe.base import MoEContext, MoEScheme

__all__ = ["MoEContext", "MoEScheme"]
