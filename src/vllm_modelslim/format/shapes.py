"""Expected linear-layer sizes from ``config.json``, for checking a checkpoint without vLLM.

When vLLM loads a model it knows every layer's ``N`` (output features) and
``K`` (input features) from the model class. The layer plan
(:mod:`vllm_modelslim.format.layer_plan`), which the loader and
``vllm-modelslim inspect`` share, has no model, so it derives them from the
Hugging Face config for the projection names of Llama-style decoders
(Qwen2/3, Llama, Mistral, Qwen3-MoE):

====================  =================================  ====================
projection            N                                  K
====================  =================================  ====================
q_proj                heads · head_dim                   hidden
k_proj, v_proj        kv_heads · head_dim                hidden
o_proj                hidden                             heads · head_dim
gate_proj, up_proj    I                                  hidden
down_proj             hidden                             I
====================  =================================  ====================

with ``I = intermediate_size`` for dense MLPs, ``moe_intermediate_size`` for
routed experts and ``shared_expert_intermediate_size`` for shared experts.
Other names (or configs without these keys) give None: the caller then takes
the sizes from the stored weight, which still checks every other tensor of the
layer against it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _int(config: Mapping[str, Any], key: str) -> int | None:
    value = config.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def projection_sizes(config: Mapping[str, Any], checkpoint_prefix: str) -> tuple[int, int] | None:
    """``(N, K)`` of one checkpoint linear layer (e.g. ``model.layers.0.self_attn.k_proj``), or None.

    Args:
        config: the decoded ``config.json`` of the model folder.
        checkpoint_prefix: the layer's name in the checkpoint (unfused shard).

    Returns:
        The full (unsharded) output and input feature counts, or None when the
        config does not determine them.
    """
    hidden = _int(config, "hidden_size")
    heads = _int(config, "num_attention_heads")
    kv_heads = _int(config, "num_key_value_heads") or heads
    head_dim = _int(config, "head_dim") or (hidden // heads if hidden and heads else None)
    parts = checkpoint_prefix.split(".")
    projection = parts[-1]
    if ".experts." in checkpoint_prefix:
        intermediate = _int(config, "moe_intermediate_size")
    elif "shared_expert" in parts:
        intermediate = _int(config, "shared_expert_intermediate_size")
    else:
        intermediate = _int(config, "intermediate_size")
    attention = {
        "q_proj": (heads * head_dim, hidden) if heads and head_dim else None,
        "k_proj": (kv_heads * head_dim, hidden) if kv_heads and head_dim else None,
        "v_proj": (kv_heads * head_dim, hidden) if kv_heads and head_dim else None,
        "o_proj": (hidden, heads * head_dim) if heads and head_dim else None,
    }
    mlp = {
        "gate_proj": (intermediate, hidden),
        "up_proj": (intermediate, hidden),
        "down_proj": (hidden, intermediate),
    }
    sizes = attention.get(projection) or mlp.get(projection)
    if sizes is None or None in sizes:
        return None
    return sizes  # type: ignore[return-value]
