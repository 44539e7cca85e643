"""Build the project's tiny GLM-4.5 MoE (``glm4_moe``) model from the trained dense demo model.

The layout is GLM-4.5's (``Glm4MoeForCausalLM``): the first
``first_k_dense_replace`` decoder layers keep a dense MLP, every later layer is
a mixture of routed experts plus shared experts, routed by a float router
(``mlp.gate.weight``) with sigmoid scores, a float32 ``e_score_correction_bias``,
group-limited top-k (``n_group``/``topk_group``), renormalised weights
(``norm_topk_prob``) scaled by ``routed_scaling_factor``; attention has q/k/v
biases, q/k norms and rotary embeddings on half of each head
(``partial_rotary_factor`` 0.5). One multi-token-prediction (MTP) layer
(``num_nextn_predict_layers`` = 1) is stored at index ``num_hidden_layers``, as
GLM-4.5 stores it: a full MoE decoder layer plus ``enorm``, ``hnorm``,
``eh_proj`` ``[hidden, 2·hidden]`` and ``shared_head.norm``.

Weights are upcycled rather than random, for the same reason as the tiny
Qwen3-MoE (``examples/tiny_qwen3_moe.py``): attention, norms, embeddings and the
dense layers are the demo model's; each routed and shared expert of layer
``l`` is the demo model's MLP of layer ``l`` plus independent Gaussian noise,
with ``down_proj`` scaled so that the shared expert and the scaled routed
experts each contribute half of the dense MLP's output. The router, the
correction bias, the q/k/v biases and the MTP projections are random. The
model keeps writing recognisable English (rotating half of each head instead
of all of it costs the attention some quality), while a wrong routing, bias or
expert changes the numbers.

Tensors are stored per expert (``mlp.experts.E.{gate,up,down}_proj.weight``, the
layout of GLM-4.5 checkpoints and of transformers 4.57, which msmodelslim's
``glm4_moe`` adapter reads), with ``model.safetensors.index.json`` (msmodelslim
loads layers beyond the first through the index).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class TinyGlm4MoeSpec:
    """Shape of the GLM-4.5 MoE model (hidden size, heads and vocabulary come from the demo model).

    Attributes:
        num_experts: routed experts per MoE layer (``n_routed_experts``).
        top_k: experts per token (``num_experts_per_tok``).
        n_group: expert groups of the group-limited routing.
        topk_group: groups each token may pick experts from.
        routed_scaling_factor: factor on the renormalised routing weights.
        first_k_dense_replace: leading decoder layers with a dense MLP.
        expert_noise: per-expert noise, relative to each dense weight's std.
        router_std: standard deviation of the random router weights.
        correction_bias_std: standard deviation of ``e_score_correction_bias``.
        qkv_bias_std: standard deviation of the q/k/v biases.
        seed: seed of every random tensor.
    """

    num_experts: int = 8
    top_k: int = 2
    n_group: int = 2
    topk_group: int = 1
    routed_scaling_factor: float = 2.5
    first_k_dense_replace: int = 1
    expert_noise: float = 0.2
    router_std: float = 0.1
    correction_bias_std: float = 0.05
    qkv_bias_std: float = 0.05
    seed: int = 0

    def cache_key(self) -> str:
        """A short, stable string that changes whenever the spec changes."""
        import hashlib

        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def glm4_moe_config(dense_config: dict, spec: TinyGlm4MoeSpec) -> dict:
    """``config.json`` of the GLM-4.5 model: transformers 5 keys plus the 4.x ones msmodelslim reads.

    Raises:
        ValueError: ``dense_config`` is not a dense Qwen3 config.
    """
    from transformers import Glm4MoeConfig

    if dense_config.get("model_type") != "qwen3":
        raise ValueError(f"expected a qwen3 demo model config, got {dense_config.get('model_type')}")
    rope_theta = dense_config.get("rope_theta", 1_000_000.0)
    config = Glm4MoeConfig(
        vocab_size=dense_config["vocab_size"],
        hidden_size=dense_config["hidden_size"],
        intermediate_size=dense_config["intermediate_size"],
        moe_intermediate_size=dense_config["intermediate_size"],
        num_hidden_layers=dense_config["num_hidden_layers"],
        num_attention_heads=dense_config["num_attention_heads"],
        num_key_value_heads=dense_config["num_key_value_heads"],
        head_dim=dense_config["head_dim"],
        partial_rotary_factor=0.5,
        max_position_embeddings=dense_config["max_position_embeddings"],
        rms_norm_eps=dense_config["rms_norm_eps"],
        rope_theta=rope_theta,
        attention_bias=True,
        use_qk_norm=True,
        num_experts_per_tok=spec.top_k,
        n_shared_experts=1,
        n_routed_experts=spec.num_experts,
        routed_scaling_factor=spec.routed_scaling_factor,
        n_group=spec.n_group,
        topk_group=spec.topk_group,
        first_k_dense_replace=spec.first_k_dense_replace,
        norm_topk_prob=True,
        num_nextn_predict_layers=1,
        tie_word_embeddings=False,
        bos_token_id=dense_config.get("bos_token_id"),
        eos_token_id=dense_config.get("eos_token_id"),
        pad_token_id=dense_config.get("pad_token_id"),
    )
    config_dict = config.to_dict()
    config_dict.update(
        architectures=["Glm4MoeForCausalLM"],
        dtype="bfloat16",
        rope_theta=rope_theta,  # the 4.x names msmodelslim's transformers reads
        partial_rotary_factor=0.5,
    )
    return config_dict


def build_tiny_glm4_moe(dense_dir: Path, out_dir: Path, spec: TinyGlm4MoeSpec | None = None) -> Path:
    """Write the GLM-4.5 MoE checkpoint upcycled from ``dense_dir`` (a Qwen3 demo model) to ``out_dir``.

    Returns:
        ``out_dir`` (bf16 weights with ``model.safetensors.index.json``, config, tokenizer files).

    Raises:
        ValueError: ``dense_dir`` is not a dense Qwen3 checkpoint.
    """
    spec = spec or TinyGlm4MoeSpec()
    dense_dir, out_dir = Path(dense_dir), Path(out_dir)
    dense_config = json.loads((dense_dir / "config.json").read_text())
    config = glm4_moe_config(dense_config, spec)
    dense = {k: v.float() for k, v in load_file(str(dense_dir / "model.safetensors")).items()}
    generator = torch.Generator().manual_seed(spec.seed)
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    def noisy(weight: torch.Tensor) -> torch.Tensor:
        return weight + randn(*weight.shape) * (spec.expert_noise * weight.std())

    tensors: dict[str, torch.Tensor] = {
        name: tensor for name, tensor in dense.items() if not name.startswith("model.layers.")
    }
    # Layer `layers` is the MTP layer: a MoE decoder layer made from the last dense layer.
    for layer in range(layers + 1):
        source, prefix = f"model.layers.{min(layer, layers - 1)}", f"model.layers.{layer}"
        for name, tensor in dense.items():
            if name.startswith(source + ".") and ".mlp." not in name:
                tensors[prefix + name[len(source) :]] = tensor
        for proj in ("q_proj", "k_proj", "v_proj"):
            rows = dense[f"{source}.self_attn.{proj}.weight"].shape[0]
            tensors[f"{prefix}.self_attn.{proj}.bias"] = randn(rows) * spec.qkv_bias_std
        mlp = {proj: dense[f"{source}.mlp.{proj}.weight"] for proj in PROJECTIONS}
        if layer < spec.first_k_dense_replace:
            for proj, weight in mlp.items():
                tensors[f"{prefix}.mlp.{proj}.weight"] = weight
            continue
        tensors[f"{prefix}.mlp.gate.weight"] = randn(spec.num_experts, hidden) * spec.router_std
        bias = randn(spec.num_experts) * spec.correction_bias_std
        tensors[f"{prefix}.mlp.gate.e_score_correction_bias"] = bias
        # Each half of the dense output: shared · 0.5, routed (weights summing to 1) · 0.5 / factor · factor.
        down_scale = {"shared_experts": 0.5, "experts": 0.5 / spec.routed_scaling_factor}
        for proj, weight in mlp.items():
            tensors[f"{prefix}.mlp.shared_experts.{proj}.weight"] = noisy(weight) * (
                down_scale["shared_experts"] if proj == "down_proj" else 1.0
            )
            for expert in range(spec.num_experts):
                tensors[f"{prefix}.mlp.experts.{expert}.{proj}.weight"] = noisy(weight) * (
                    down_scale["experts"] if proj == "down_proj" else 1.0
                )
    mtp = f"model.layers.{layers}"
    tensors[f"{mtp}.enorm.weight"] = torch.ones(hidden)
    tensors[f"{mtp}.hnorm.weight"] = torch.ones(hidden)
    tensors[f"{mtp}.eh_proj.weight"] = randn(hidden, 2 * hidden) * (2 * hidden) ** -0.5
    tensors[f"{mtp}.shared_head.norm.weight"] = torch.ones(hidden)
    stored = {
        name: t if name.endswith("e_score_correction_bias") else t.to(torch.bfloat16)
        for name, t in tensors.items()
    }

    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file(stored, str(partial / "model.safetensors"), metadata={"format": "pt"})
    index = {
        "metadata": {"total_size": sum(t.numel() * t.element_size() for t in stored.values())},
        "weight_map": dict.fromkeys(sorted(stored), "model.safetensors"),
    }
    (partial / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (partial / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    for path in dense_dir.iterdir():
        if path.is_file() and path.name not in ("config.json", "model.safetensors", "training.json"):
            shutil.copy(path, partial / path.name)
    (partial / "tiny_glm4_moe_spec.json").write_text(json.dumps(asdict(spec), indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    return out_dir


def cached_tiny_glm4_moe(
    spec: TinyGlm4MoeSpec | None = None, progress: Callable[[str], None] | None = None
) -> Path:
    """The tiny GLM-4.5 MoE from the cache, upcycled from the committed dense demo model on first use."""
    from vllm_modelslim.examples.msmodelslim_runner import cache_dir, model_key
    from vllm_modelslim.examples.tiny_qwen3 import demo_model_dir

    spec = spec or TinyGlm4MoeSpec()
    dense = demo_model_dir()
    folder = cache_dir() / "models" / f"tiny-glm4-moe-{spec.cache_key()}-{model_key(dense)}"
    if not (folder / "config.json").exists():
        if progress:
            progress(f"upcycling the demo model into a GLM-4.5 MoE at {folder}")
        build_tiny_glm4_moe(dense, folder, spec)
    return folder
