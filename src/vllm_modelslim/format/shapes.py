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
q_proj                heads · head_dim (· 2 gated)       hidden
k_proj, v_proj        kv_heads · head_dim                hidden
o_proj                hidden                             heads · head_dim
gate_proj, up_proj    I                                  hidden
down_proj             hidden                             I
====================  =================================  ====================

where "gated" is attention with an output gate packed into ``q_proj``
(``attn_output_gate``, on by default for ``qwen3_next``), and
with ``I = intermediate_size`` for dense MLPs, ``moe_intermediate_size`` for
routed experts and ``shared_expert_intermediate_size`` for shared experts
(``shared_experts`` of DeepSeek-V3 / GLM-4.5: ``moe_intermediate_size ·
n_shared_experts``). MLA models (``kv_lora_rank`` in the config: DeepSeek-V2/V3,
Kimi-K2) have, with ``n``/``r``/``v`` the nope/rope/value head dims:

====================  =================================  ====================
q_a_proj              q_lora_rank                        hidden
q_b_proj, q_proj      heads · (n + r)                    q_lora_rank (hidden)
kv_a_proj_with_mqa    kv_lora_rank + r                   hidden
kv_b_proj             heads · (n + v)                    kv_lora_rank
o_proj                hidden                             heads · v
====================  =================================  ====================
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


def _mla_sizes(
    config: Mapping[str, Any], hidden: int | None, heads: int | None
) -> dict[str, tuple[int | None, int | None] | None]:
    """``(N, K)`` of the attention projections of an MLA model (table in the module docstring)."""
    lora_q, lora_kv = _int(config, "q_lora_rank"), _int(config, "kv_lora_rank")
    nope, rope, v = (_int(config, k) for k in ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"))
    q_heads = heads * (nope + rope) if heads and nope and rope else None
    return {
        "q_a_proj": (lora_q, hidden),
        "q_b_proj": (q_heads, lora_q),
        "q_proj": (q_heads, hidden),
        "kv_a_proj_with_mqa": (lora_kv + rope if lora_kv and rope else None, hidden),
        "kv_b_proj": (heads * (nope + v) if heads and nope and v else None, lora_kv),
        "o_proj": (hidden, heads * v if heads and v else None),
    }


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
    elif "shared_experts" in parts:
        moe, shared = _int(config, "moe_intermediate_size"), _int(config, "n_shared_experts")
        intermediate = moe * shared if moe and shared else None
    elif "shared_expert" in parts:
        intermediate = _int(config, "shared_expert_intermediate_size")
    else:
        intermediate = _int(config, "intermediate_size")
    gated = 2 if config.get("attn_output_gate", config.get("model_type") == "qwen3_next") else 1
    attention = {
        "q_proj": (gated * heads * head_dim, hidden) if heads and head_dim else None,
        "k_proj": (kv_heads * head_dim, hidden) if kv_heads and head_dim else None,
        "v_proj": (kv_heads * head_dim, hidden) if kv_heads and head_dim else None,
        "o_proj": (hidden, heads * head_dim) if heads and head_dim else None,
    }
    if _int(config, "kv_lora_rank"):
        attention = _mla_sizes(config, hidden, heads)
    mlp = {
        "gate_proj": (intermediate, hidden),
        "up_proj": (intermediate, hidden),
        "down_proj": (hidden, intermediate),
    }
    sizes = attention.get(projection) or mlp.get(projection)
    if sizes is None or None in sizes:
        return None
    return sizes  # type: ignore[return-value]
