"""Packed (fused) modules per ``model_type``: which checkpoint layers a vLLM layer fuses.

vLLM fuses ``q_proj``/``k_proj``/``v_proj`` into ``qkv_proj`` and
``gate_proj``/``up_proj`` into ``gate_up_proj``; a fused MoE layer named
``experts`` holds every ``experts.<e>.{gate,up,down}_proj``. The description
file lists the unfused checkpoint names, so the quant type of a fused layer is
read from its shards (spec §1.5, §7). Each model class in vLLM declares its own
``packed_modules_mapping``; this table adds what the quantization lookup needs
on top of it (for MoE, expert 0 decides the type, as in vllm-ascend; the MoE
method then checks that every expert agrees).
"""

from __future__ import annotations

from collections.abc import Mapping

_ATTENTION_AND_MLP: dict[str, list[str]] = {
    "qkv_proj": ["q_proj", "k_proj", "v_proj"],
    "gate_up_proj": ["gate_proj", "up_proj"],
}
_EXPERTS: dict[str, list[str]] = {
    "experts": ["experts.0.gate_proj", "experts.0.up_proj", "experts.0.down_proj"],
}
_MLA: dict[str, list[str]] = {
    # DeepSeek-style multi-head latent attention fuses the q and kv down-projections.
    "fused_qkv_a_proj": ["q_a_proj", "kv_a_proj_with_mqa"],
    "gate_up_proj": ["gate_proj", "up_proj"],
}
_DEEPSEEK = {**_MLA, **_EXPERTS}

PACKED_MODULES_BY_MODEL_TYPE: dict[str, dict[str, list[str]]] = {
    "llama": _ATTENTION_AND_MLP,
    "mistral": _ATTENTION_AND_MLP,
    "qwen2": _ATTENTION_AND_MLP,
    "qwen3": _ATTENTION_AND_MLP,
    "qwen2_moe": {**_ATTENTION_AND_MLP, **_EXPERTS},
    "qwen3_moe": {**_ATTENTION_AND_MLP, **_EXPERTS},
    # MoE families of vllm-ascend's table (spec §7) that vLLM's CPU backend can run
    # (standard or CPU MLA attention); only qwen3_moe is exercised end to end here.
    "glm4_moe": {**_ATTENTION_AND_MLP, **_EXPERTS},
    "deepseek_v2": _DEEPSEEK,
    "deepseek_v3": _DEEPSEEK,
    "kimi_k2": _DEEPSEEK,
    "minimax_m2": {
        "qkv_proj": ["q_proj", "k_proj", "v_proj"],
        "experts": ["experts.0.w1", "experts.0.w2", "experts.0.w3"],
    },
}


def packed_modules_for(
    model_type: str | None, model_mapping: Mapping[str, list[str]] | None
) -> dict[str, list[str]]:
    """The packed-module mapping used for quant-type lookup.

    Args:
        model_type: ``hf_config.model_type`` (may be None for unknown models).
        model_mapping: the model class's own ``packed_modules_mapping`` as vLLM
            hands it to the quantization config.

    Returns:
        The model's mapping, extended (and, for equal keys, overridden) by our
        per-``model_type`` table.
    """
    mapping: dict[str, list[str]] = {k: list(v) for k, v in (model_mapping or {}).items()}
    mapping.update({k: list(v) for k, v in PACKED_MODULES_BY_MODEL_TYPE.get(model_type or "", {}).items()})
    return mapping


_VLLM_PREFIX_FIXES: dict[str, tuple[tuple[str, str], ...]] = {
    # vLLM 0.32's BertAttention builds BertSelfAttention with prefix "<layer>.attention.output"
    # (the attribute, and the checkpoint, say "attention.self"), so its fused q/k/v layer is
    # announced as "...attention.output.qkv_proj" next to the real "...attention.output.dense".
    "bert": ((".attention.output.qkv_proj", ".attention.self.qkv_proj"),),
}


def checkpoint_layer_prefix(model_type: str | None, prefix: str) -> str:
    """The layer prefix vLLM should have passed to the quant config for ``prefix`` (usually ``prefix``).

    Undoes the known prefix slips of vLLM model classes (one per ``model_type``
    in a small table), so that the description lookup sees the checkpoint's
    layer name.
    """
    for wrong, right in _VLLM_PREFIX_FIXES.get(model_type or "", ()):
        if prefix.endswith(wrong):
            return prefix[: -len(wrong)] + right
    return prefix
