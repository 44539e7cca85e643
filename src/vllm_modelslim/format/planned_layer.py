"""One planned layer of a ModelSlim checkpoint, and the name conventions the plan uses.

The plan itself is :mod:`vllm_modelslim.format.layer_plan`; this module holds
what its parts share (the planner, the tensor-parallel checks, the loader and
``inspect``): :class:`PlannedLayer` and the layer-name sets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vllm_modelslim.format.description import FLOAT
from vllm_modelslim.format.errors import (
    ModelSlimFormatError,
)

ROW_PARALLEL_NAMES = frozenset({"o_proj", "down_proj", "out_proj", "w2", "dense_4h_to_h"})
"""Checkpoint layer names that vLLM builds as ``RowParallelLinear`` (split along K, not N)."""

REPLICATED_NAMES = frozenset(
    {"gate", "shared_expert_gate", "fused_qkv_a_proj", "q_a_proj", "kv_a_proj_with_mqa"}
)
"""Checkpoint layer names that vLLM builds as ``ReplicatedLinear`` (whole on every rank: MoE routers,
DeepSeek's low-rank down-projections); the tensor-parallel checks skip them."""

EMBEDDING_NAMES = frozenset({"embed_tokens", "lm_head", "word_embeddings", "wte"})
"""Checkpoint layer names of embeddings and the LM head (vLLM builds no linear layer for them)."""

QUANTIZATION_SUFFIXES = (
    "weight_scale",
    "weight_offset",
    "weight_scale_second",
    "weight_offset_second",
    "deq_scale",
    "quant_bias",
    "input_scale",
    "input_offset",
    "scale_bias",
    "weight_packed",
    "weight_shape",
    "clip_ratio",
    "left_trans",
    "right_trans",
)
"""Tensor suffixes that only a quantized layer stores (a FLOAT layer storing one is a mismatch)."""

NUM_EXPERTS_KEYS = ("num_experts", "n_routed_experts", "num_local_experts")
"""``config.json`` keys that give the number of routed experts."""

MOE = "moe"
LINEAR = "linear"


@dataclass
class PlannedLayer:
    """One vLLM layer as the plan sees it.

    Attributes:
        prefix: vLLM layer prefix in checkpoint naming (``model.layers.0.self_attn.qkv_proj``;
            ``model.layers.0.mlp.experts``; ``model.layers.0.self_attn.attn`` for a C8 cache).
        layer_type: ``"linear"``, ``"moe"``, ``"embedding"`` or ``"attention"``.
        quant_type: the description's quant type, ``"FLOAT"``, or ``"?"`` when it cannot be decided;
            a mixed layer shows its shard types joined (``"FLOAT + W8A8_MIX + W8A8_MIX"``).
        shards: checkpoint prefixes of the fused parts (MoE: expert 0's gate, up and down).
        scheme_class: the registered scheme (None for FLOAT, mixed layers, embeddings and
            unknown types).
        scheme: the scheme instance built for the checks (a linear scheme, or a MoE scheme
            whose ``projection("w13")``/``projection("w2")`` are expert 0's), or None.
        row_parallel: vLLM splits the layer along K (``o_proj``, ``down_proj``).
        num_experts: routed experts (MoE only).
        projections: checkpoint names of an expert's gate, up and down projections (MoE only).
        out_features: full N of each shard (MoE: of the gate and up projections), None when unknown.
        in_features: full K (MoE: ``hidden_size``), None when unknown.
        errors: every problem found for this layer, in the order found (a mixed layer's
            are its shards').
        shard_layers: a mixed fused layer (shards of different quant types): one planned
            linear layer per shard, in shard order, each named by its checkpoint prefix
            and planned with its own quant type and scheme; empty otherwise.
    """

    prefix: str
    layer_type: str
    quant_type: str
    shards: tuple[str, ...]
    scheme_class: type | None = None
    scheme: Any = None
    row_parallel: bool = False
    num_experts: int = 0
    projections: tuple[str, str, str] | None = None
    out_features: tuple[int, ...] | None = None
    in_features: int | None = None
    errors: list[ModelSlimFormatError] = field(default_factory=list)
    shard_layers: tuple[PlannedLayer, ...] = ()

    @property
    def is_float(self) -> bool:
        """True when the layer stays unquantized."""
        return self.quant_type == FLOAT

    @property
    def is_mixed(self) -> bool:
        """True for a fused layer whose shards have different quant types (see ``shard_layers``)."""
        return bool(self.shard_layers)

    def raise_first_error(self) -> None:
        """Raise the first problem found for this layer, if any.

        Raises:
            ModelSlimFormatError: the layer's first problem (a subclass naming layer and file).
        """
        if self.errors:
            raise self.errors[0]


def config_int(config: Mapping[str, Any], key: str) -> int | None:
    """``config[key]`` when it is a positive int, else None (absent or malformed sizes skip checks)."""
    value = config.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The language model's part of a (possibly multimodal) config."""
    text = config.get("text_config")
    if isinstance(text, Mapping) and "num_hidden_layers" in text and "num_hidden_layers" not in config:
        return {**text, "model_type": config.get("model_type")}
    return config
