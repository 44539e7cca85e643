"""Build the project's tiny Qwen3-MoE model by upcycling the trained dense demo model.

Training a mixture of experts from scratch would cost minutes; instead every
expert of layer ``l`` starts from the dense model's MLP of layer ``l`` plus
independent Gaussian noise (``expert_noise`` times the weight's standard
deviation), and each layer gets a random router. With top-k renormalised
routing the layer output stays close to the dense MLP's, so the model still
writes recognisable English, while the experts differ enough that a wrong
routing or a wrong expert's weights changes the numbers.

The output is a normal Hugging Face Qwen3-MoE checkpoint with one tensor per
expert projection (``model.layers.N.mlp.experts.E.{gate,up,down}_proj.weight``,
the layout vLLM and msmodelslim read) and the dense model's tokenizer. The
config also carries the pre-5.x key names (``num_experts``, ``rope_theta``)
that msmodelslim's transformers 4.57 reads.
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
class TinyQwen3MoeSpec:
    """Shape of the MoE model (the rest comes from the dense demo model).

    Attributes:
        num_experts: routed experts per layer.
        top_k: experts per token (``num_experts_per_tok``).
        expert_noise: per-expert noise, relative to each dense weight's std.
        router_std: standard deviation of the random router weights.
        seed: seed of the noise and the router.
    """

    num_experts: int = 8
    top_k: int = 2
    expert_noise: float = 0.2
    router_std: float = 0.1
    seed: int = 0

    def cache_key(self) -> str:
        """A short, stable string that changes whenever the spec changes."""
        import hashlib

        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def build_tiny_qwen3_moe(dense_dir: Path, out_dir: Path, spec: TinyQwen3MoeSpec | None = None) -> Path:
    """Write the upcycled MoE checkpoint of ``dense_dir`` (a Qwen3 demo model) to ``out_dir``.

    Returns:
        ``out_dir`` (bf16 weights, config, tokenizer files).

    Raises:
        ValueError: ``dense_dir`` is not a dense Qwen3 checkpoint.
    """
    from transformers import Qwen3MoeConfig

    spec = spec or TinyQwen3MoeSpec()
    dense_dir, out_dir = Path(dense_dir), Path(out_dir)
    dense_config = json.loads((dense_dir / "config.json").read_text())
    if dense_config.get("model_type") != "qwen3":
        raise ValueError(
            f"{dense_dir / 'config.json'}: expected a qwen3 model, got {dense_config.get('model_type')}"
        )
    dense = load_file(str(dense_dir / "model.safetensors"))
    generator = torch.Generator().manual_seed(spec.seed)
    hidden, layers = dense_config["hidden_size"], dense_config["num_hidden_layers"]

    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in dense.items():
        if ".mlp." not in name:
            tensors[name] = tensor
    for layer in range(layers):
        prefix = f"model.layers.{layer}.mlp"
        router = torch.randn(spec.num_experts, hidden, generator=generator) * spec.router_std
        tensors[f"{prefix}.gate.weight"] = router.to(torch.bfloat16)
        for proj in PROJECTIONS:
            weight = dense[f"{prefix}.{proj}.weight"].float()
            std = weight.std()
            for expert in range(spec.num_experts):
                noise = torch.randn(weight.shape, generator=generator) * (spec.expert_noise * std)
                tensors[f"{prefix}.experts.{expert}.{proj}.weight"] = (weight + noise).to(torch.bfloat16)

    config = Qwen3MoeConfig(
        vocab_size=dense_config["vocab_size"],
        hidden_size=hidden,
        intermediate_size=dense_config["intermediate_size"],
        moe_intermediate_size=dense_config["intermediate_size"],
        num_hidden_layers=layers,
        num_attention_heads=dense_config["num_attention_heads"],
        num_key_value_heads=dense_config["num_key_value_heads"],
        head_dim=dense_config["head_dim"],
        max_position_embeddings=dense_config["max_position_embeddings"],
        rms_norm_eps=dense_config["rms_norm_eps"],
        num_experts=spec.num_experts,
        num_experts_per_tok=spec.top_k,
        norm_topk_prob=True,
        decoder_sparse_step=1,
        tie_word_embeddings=False,
        rope_theta=dense_config.get("rope_theta", 1_000_000.0),
        bos_token_id=dense_config.get("bos_token_id"),
        eos_token_id=dense_config.get("eos_token_id"),
        pad_token_id=dense_config.get("pad_token_id"),
    )
    config_dict = config.to_dict()
    config_dict.update(
        architectures=["Qwen3MoeForCausalLM"],
        dtype="bfloat16",
        num_experts=spec.num_experts,  # the 4.x name msmodelslim's transformers reads
        rope_theta=config_dict["rope_parameters"]["rope_theta"],
    )

    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file(tensors, str(partial / "model.safetensors"), metadata={"format": "pt"})
    (partial / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True))
    for path in dense_dir.iterdir():
        if path.is_file() and path.name not in ("config.json", "model.safetensors", "training.json"):
            shutil.copy(path, partial / path.name)
    (partial / "tiny_qwen3_moe_spec.json").write_text(json.dumps(asdict(spec), indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    return out_dir


def cached_tiny_qwen3_moe(
    spec: TinyQwen3MoeSpec | None = None, progress: Callable[[str], None] | None = None
) -> Path:
    """The tiny Qwen3-MoE from the cache, upcycled from the committed dense demo model on first use."""
    from vllm_modelslim.examples.msmodelslim_runner import cache_dir, model_key
    from vllm_modelslim.examples.tiny_qwen3 import demo_model_dir

    spec = spec or TinyQwen3MoeSpec()
    dense = demo_model_dir()
    folder = cache_dir() / "models" / f"tiny-qwen3-moe-{spec.cache_key()}-{model_key(dense)}"
    if not (folder / "config.json").exists():
        if progress:
            progress(f"upcycling the demo model into a {spec.num_experts}-expert MoE at {folder}")
        build_tiny_qwen3_moe(dense, folder, spec)
    return folder
