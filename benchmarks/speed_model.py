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


def build_speed_model(size: str = "full", progress=print) -> Path:
    """The random-weight bf16 Qwen3 of ``SPEED_MODELS[size]`` (built once under the cache folder).

    Raises:
        KeyError: an unknown ``size``.
    """
    from transformers import Qwen3Config, Qwen3ForCausalLM

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
