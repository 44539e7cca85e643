"""A random-weight Qwen3 large enough that GEMMs dominate, for speed benchmarks (built locally, cached).

Two sizes (:data:`SPEED_MODELS`): ``full`` (hidden 2048, 8 layers, 16 query
and 8 KV heads of 128, MLP 6144: 0.40 G parameters in the decoder layers,
0.81 GB in bf16) and ``quick`` (hidden 1024, 4 layers, MLP 3072: 50 M
parameters), both with the demo model's 4096-token tokenizer, so the
embedding and LM head stay small next to the layers. Weights are drawn like
Hugging Face's initialisation (normal, std 0.02; norms 1), seeded: the numbers
mean nothing, only their shapes and the time spent on them matter. The
checkpoints of these models are made by the real msmodelslim
(``msmodelslim_runner.quantize``) like those of the demo model.

One Qwen3-MoE (:data:`SPEED_MOE_MODELS`): ``moe-large``, Qwen3-30B-A3B's
proportions scaled down to fit a 24 GiB host with msmodelslim running on it
(hidden 2048, 32 query and 4 KV heads of 128, 32 routed experts with
``moe_intermediate_size`` 768 and top-4 where Qwen3-30B-A3B has 128 and top-8,
4 layers instead of 48: 0.68 G parameters in the decoder layers, 1.4 GB in
bf16, of which 0.60 G in the experts; a decode step reads 4 of the 32 experts
of each layer per token). Its tensors are drawn directly in the per-expert
layout vLLM and msmodelslim read (``mlp.experts.<e>.{gate,up,down}_proj``),
router std 0.02 like the rest, so routing is close to uniform.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from vllm_modelslim.examples.msmodelslim_runner import cache_dir
from vllm_modelslim.examples.tiny_qwen3 import _write_legacy_config_keys, demo_model_dir

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")


@dataclass(frozen=True)
class SpeedModelSpec:
    """Shape of a speed-benchmark Qwen3 (the vocabulary is the demo model's, 4096)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int = 128
    seed: int = 0


SPEED_MODELS: dict[str, SpeedModelSpec] = {
    "full": SpeedModelSpec(2048, 6144, 8, 16, 8),
    "quick": SpeedModelSpec(1024, 3072, 4, 8, 4),
}


@dataclass(frozen=True)
class SpeedMoeSpec:
    """Shape of a speed-benchmark Qwen3-MoE (vocabulary and tokenizer: the demo model's, 4096)."""

    hidden_size: int
    moe_intermediate_size: int
    num_experts: int
    num_experts_per_tok: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int = 128
    seed: int = 0


SPEED_MOE_MODELS: dict[str, SpeedMoeSpec] = {
    "moe-large": SpeedMoeSpec(2048, 768, 32, 4, 4, 32, 4),
}


def build_speed_model(size: str = "full", progress=print) -> Path:
    """The random-weight bf16 Qwen3 of ``SPEED_MODELS[size]`` (built once under the cache folder).

    Raises:
        KeyError: an unknown ``size``.
    """
    from transformers import Qwen3Config, Qwen3ForCausalLM

    if size in SPEED_MOE_MODELS:
        return build_speed_moe_model(size, progress)
    spec = SPEED_MODELS[size]
    out = cache_dir() / "models" / f"speed-qwen3-{size}-h{spec.hidden_size}-l{spec.num_hidden_layers}"
    if (out / "model.safetensors").exists():
        return out
    progress(f"building the random-weight speed model {out.name}")
    demo = demo_model_dir()
    params = asdict(spec)
    seed = params.pop("seed")
    base = json.loads((demo / "config.json").read_text())
    config = Qwen3Config(
        **params,
        vocab_size=base["vocab_size"],
        max_position_embeddings=base["max_position_embeddings"],
        tie_word_embeddings=False,
        rope_theta=1_000_000.0,
        **{key: base[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id")},
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).to(torch.bfloat16).eval()
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(str(partial), safe_serialization=True)
    _write_legacy_config_keys(partial / "config.json")
    for name in _TOKENIZER_FILES:
        shutil.copy(demo / name, partial / name)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


def _moe_tensors(spec: SpeedMoeSpec, vocab_size: int) -> dict[str, torch.Tensor]:
    """Random bf16 tensors of a Qwen3-MoE of ``spec`` (normal, std 0.02; norms 1), by checkpoint name."""
    generator = torch.Generator().manual_seed(spec.seed)
    hidden, inter, head = spec.hidden_size, spec.moe_intermediate_size, spec.head_dim

    def normal(*shape: int) -> torch.Tensor:
        return (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)

    tensors = {
        "model.embed_tokens.weight": normal(vocab_size, hidden),
        "lm_head.weight": normal(vocab_size, hidden),
        "model.norm.weight": torch.ones(hidden, dtype=torch.bfloat16),
    }
    for layer in range(spec.num_hidden_layers):
        prefix = f"model.layers.{layer}"
        for name, size in (("input_layernorm", hidden), ("post_attention_layernorm", hidden)):
            tensors[f"{prefix}.{name}.weight"] = torch.ones(size, dtype=torch.bfloat16)
        for name in ("q_norm", "k_norm"):
            tensors[f"{prefix}.self_attn.{name}.weight"] = torch.ones(head, dtype=torch.bfloat16)
        q, kv = spec.num_attention_heads * head, spec.num_key_value_heads * head
        for name, shape in (("q_proj", (q, hidden)), ("k_proj", (kv, hidden)), ("v_proj", (kv, hidden))):
            tensors[f"{prefix}.self_attn.{name}.weight"] = normal(*shape)
        tensors[f"{prefix}.self_attn.o_proj.weight"] = normal(hidden, q)
        tensors[f"{prefix}.mlp.gate.weight"] = normal(spec.num_experts, hidden)
        for expert in range(spec.num_experts):
            experts = f"{prefix}.mlp.experts.{expert}"
            tensors[f"{experts}.gate_proj.weight"] = normal(inter, hidden)
            tensors[f"{experts}.up_proj.weight"] = normal(inter, hidden)
            tensors[f"{experts}.down_proj.weight"] = normal(hidden, inter)
    return tensors


def build_speed_moe_model(size: str = "moe-large", progress=print) -> Path:
    """The random-weight bf16 Qwen3-MoE of ``SPEED_MOE_MODELS[size]`` (built once under the cache folder).

    The config is the tiny Qwen3-MoE's (``examples/tiny_qwen3_moe.py``: the
    keys both vLLM and msmodelslim's transformers 4.57 read) with this shape.

    Raises:
        KeyError: an unknown ``size``.
    """
    from safetensors.torch import save_file

    from vllm_modelslim.examples.tiny_qwen3_moe import cached_tiny_qwen3_moe

    spec = SPEED_MOE_MODELS[size]
    out = (
        cache_dir()
        / "models"
        / (f"speed-qwen3-{size}-h{spec.hidden_size}-e{spec.num_experts}-l{spec.num_hidden_layers}")
    )
    if (out / "model.safetensors").exists():
        return out
    progress(f"building the random-weight speed model {out.name}")
    tiny = cached_tiny_qwen3_moe(progress=progress)
    config = json.loads((tiny / "config.json").read_text())
    shape = asdict(spec)
    shape.pop("seed")
    config.update(
        shape,
        intermediate_size=spec.moe_intermediate_size,
        num_local_experts=spec.num_experts,
    )
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file(
        _moe_tensors(spec, config["vocab_size"]),
        str(partial / "model.safetensors"),
        metadata={"format": "pt"},
    )
    (partial / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    for name in (*_TOKENIZER_FILES, "generation_config.json"):
        if (tiny / name).exists():
            shutil.copy(tiny / name, partial / name)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out
