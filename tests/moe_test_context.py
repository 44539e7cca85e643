"""The MoE context of a stand-in ``FusedMoE`` layer (no checkpoint folder), for the MoE scheme unit tests."""

from __future__ import annotations

from vllm_modelslim.format.description import QuantDescription
from vllm_modelslim.schemes.moe.base import MoEContext

PREFIX = "model.layers.0.mlp.experts"
PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


def moe_test_context(quant_type: str, num_experts: int) -> MoEContext:
    """Layer ``model.layers.0.mlp.experts``; the description gives every expert projection ``quant_type``."""
    entries = {f"{PREFIX}.{e}.{p}.weight": quant_type for e in range(num_experts) for p in PROJECTIONS}
    return MoEContext(
        prefix=PREFIX,
        quant_type=quant_type,
        checkpoint_prefix=PREFIX,
        projections=PROJECTIONS,
        num_experts=num_experts,
        description=QuantDescription.from_mapping(entries, "quant_model_description.json"),
    )
