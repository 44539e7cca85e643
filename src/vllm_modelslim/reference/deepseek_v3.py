"""Pure-torch reference forward of a (ModelSlim-quantized) DeepSeek-V3 / Kimi-K2 checkpoint.

Written from DeepSeek-V3's published architecture (the Hugging Face
``modeling_deepseek_v3`` and DeepSeek's ``inference/model.py`` describe the
same math), independent of vLLM and of transformers:

* MLA attention, non-absorbed: ``q = q_b(norm(q_a(x)))`` split per head into
  ``[nope | rope]``; ``c, k_pe = kv_a_proj_with_mqa(x)`` split
  ``[kv_lora_rank | rope]``; ``[k_nope | v] = kv_b(norm(c))`` per head; rotary
  embedding (interleaved pairs ``(2i, 2i+1)``, base ``rope_theta``) on
  ``q_pe`` and the single shared ``k_pe`` (YaRN with factor 1, as the tiny
  model's config names it, is the same rotation); causal softmax with scale
  ``qk_head_dim^-0.5``; ``o_proj``.
* MLP: SwiGLU for layers below ``first_k_dense_replace``; then MoE:
  ``s = sigmoid(x·Gᵀ)``, choice scores ``s + e_score_correction_bias``, the
  best ``topk_group`` of ``n_group`` groups (group score = sum of its top two),
  top-k experts in those, weights ``s`` of the chosen experts renormalised
  (``norm_topk_prob``) and multiplied by ``routed_scaling_factor``; plus the
  shared experts.
* The MTP layer (``model.layers.<num_hidden_layers>``) is not part of the main
  model's forward; its tensors are ignored.

Every linear the description quantizes runs
:class:`~vllm_modelslim.reference.quantized_linear.ReferenceQuantizedLinear`
(ModelSlim's math in float64), routed experts
:class:`~vllm_modelslim.reference.moe.ReferenceExperts`; everything else runs in
``dtype``. ``kv_b_proj`` is the exception: the serving path (vllm-ascend and
this plugin) uses its *dequantized* weight ``W = q·s`` with float activations
(the MLA decode absorbs it into the query and output), so the reference does
too (``dequantized_weight``).

Under tensor parallelism the plugin's row-parallel layers (o_proj, the dense
and shared MLPs' down_proj, the routed experts' down_proj) add up to the
unsplit math (per-token dynamic scales span all ranks' K-slices), so this one
reference serves every tensor-parallel size.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file

from vllm_modelslim.format.description import FLOAT, find_description_file, parse_description_file
from vllm_modelslim.reference.model import GreedyResult
from vllm_modelslim.reference.moe import ReferenceExperts, float_linear
from vllm_modelslim.reference.quantized_linear import ReferenceQuantizedLinear

Linear = Callable[[torch.Tensor], torch.Tensor]


def dequantized_weight(quant_type: str, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """Float weight ``(q − offset)·scale`` ``[N, K]`` (float64) of an int8 per-channel layer.

    Raises:
        NotImplementedError: a quant type whose weight is not int8 with one scale per output channel.
    """
    weight, scale = tensors["weight"], tensors["weight_scale"]
    if quant_type not in ("W8A8_DYNAMIC", "W8A8_MIX", "W8A16") or scale.numel() != weight.shape[0]:
        raise NotImplementedError(
            f"no dequantization of a {quant_type} weight with scales {tuple(scale.shape)}"
        )
    offset = tensors.get("weight_offset")
    offset = offset.double().reshape(-1, 1) if offset is not None and quant_type == "W8A16" else 0.0
    return (weight.double() - offset) * scale.double().reshape(-1, 1)


@contextmanager
def _single_threaded():
    """Run torch on one thread, then restore the count.

    The reference's operations are tiny; on a loaded machine (or next to an
    in-process vLLM engine that pinned its threads) intra-op threading makes
    them ~30x slower (measured: 26 s instead of 0.8 s for 32 greedy steps).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


def _rope_interleaved(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate pairs ``(x[2i], x[2i+1])`` by ``pos·theta^(-2i/d)``; ``x`` ``[T, heads, d]``."""
    d = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]
    x1, x2 = x[..., 0::2].double(), x[..., 1::2].double()
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return out.to(x.dtype)


class DeepseekV3Reference:
    """Pure-torch forward of the DeepSeek-V3 checkpoint in ``model_dir`` (``ReferenceModel``'s interface).

    Args:
        model_dir: a ModelSlim output folder or a float DeepSeek-V3 checkpoint.
        dtype: compute dtype outside the quantized linears (float32 default).

    Raises:
        KeyError: a tensor the forward needs is missing from the checkpoint.
        ValueError: config.json is not a DeepSeek-V3-style model.
        NotImplementedError: YaRN rope scaling with a factor other than 1 (the plain
            rotary embedding is what the reference implements).
    """

    def __init__(self, model_dir: str | Path, dtype: torch.dtype = torch.float32):
        model_dir = Path(model_dir)
        self.config = c = json.loads((model_dir / "config.json").read_text())
        if c.get("kv_lora_rank") is None or c.get("q_lora_rank") is None:
            raise ValueError(f"{model_dir / 'config.json'}: not an MLA model with q/kv LoRA ranks")
        scaling = c.get("rope_scaling") or {}
        if float(scaling.get("factor", 1.0)) != 1.0:
            raise NotImplementedError(f"{model_dir / 'config.json'}: YaRN rope scaling with factor != 1")
        self.dtype = dtype
        tensors: dict[str, torch.Tensor] = {}
        for path in sorted(model_dir.glob("*.safetensors")):
            tensors.update(load_file(str(path)))
        self.description = (
            parse_description_file(find_description_file(model_dir))
            if any(model_dir.glob("quant_model_description*.json"))
            else None
        )
        self.tensors = tensors
        self.quantized_layers: dict[str, str] = {}
        self.layers = [self._layer(i) for i in range(c["num_hidden_layers"])]
        self.embed = tensors["model.embed_tokens.weight"].to(dtype)
        self.norm = tensors["model.norm.weight"].to(dtype)
        self.lm_head = self._linear("lm_head")

    def _quant_type(self, name: str) -> str | None:
        quant_type = self.description.quant_type(f"{name}.weight") if self.description else None
        return None if quant_type in (None, FLOAT) else quant_type

    def _own(self, name: str) -> dict[str, torch.Tensor]:
        return {k[len(name) + 1 :]: v for k, v in self.tensors.items() if k.startswith(name + ".")}

    def _linear(self, name: str, dequantize: bool = False) -> Linear:
        quant_type = self._quant_type(name)
        own = self._own(name)
        if quant_type is None:
            return float_linear(own["weight"], self.dtype)
        self.quantized_layers[name] = quant_type
        if dequantize:
            return float_linear(dequantized_weight(quant_type, own), self.dtype)
        return ReferenceQuantizedLinear(quant_type, own)

    def _expert_projection(self, name: str, own: dict[str, torch.Tensor]) -> tuple[Linear, str | None]:
        quant_type = self._quant_type(name)
        if quant_type is None:
            return float_linear(own["weight"], self.dtype), None
        return ReferenceQuantizedLinear(quant_type, own), quant_type

    def _layer(self, i: int) -> dict:
        c, p = self.config, f"model.layers.{i}"
        layer: dict = {
            "input_norm": self.tensors[f"{p}.input_layernorm.weight"].to(self.dtype),
            "post_norm": self.tensors[f"{p}.post_attention_layernorm.weight"].to(self.dtype),
            "q_a": self._linear(f"{p}.self_attn.q_a_proj"),
            "q_a_norm": self.tensors[f"{p}.self_attn.q_a_layernorm.weight"].to(self.dtype),
            "q_b": self._linear(f"{p}.self_attn.q_b_proj"),
            "kv_a": self._linear(f"{p}.self_attn.kv_a_proj_with_mqa"),
            "kv_a_norm": self.tensors[f"{p}.self_attn.kv_a_layernorm.weight"].to(self.dtype),
            "kv_b": self._linear(f"{p}.self_attn.kv_b_proj", dequantize=True),
            "o": self._linear(f"{p}.self_attn.o_proj"),
        }
        if i < c.get("first_k_dense_replace", 0):
            layer["mlp"] = {k: self._linear(f"{p}.mlp.{k}") for k in ("gate_proj", "up_proj", "down_proj")}
            return layer
        layer["gate"] = self.tensors[f"{p}.mlp.gate.weight"].float()
        bias = self.tensors.get(f"{p}.mlp.gate.e_score_correction_bias")
        layer["bias"] = None if bias is None else bias.float()
        layer["experts"] = ReferenceExperts(
            f"{p}.mlp.experts", c["n_routed_experts"], dict(self.tensors), self._expert_projection, self.dtype
        )
        if c.get("n_shared_experts"):
            layer["shared"] = {
                k: self._linear(f"{p}.mlp.shared_experts.{k}") for k in ("gate_proj", "up_proj", "down_proj")
            }
        return layer

    @staticmethod
    def _mlp(x: torch.Tensor, m: dict) -> torch.Tensor:
        gate, up = m["gate_proj"](x).float(), m["up_proj"](x).float()
        return m["down_proj"]((torch.nn.functional.silu(gate) * up).to(x.dtype))

    def _route(self, x: torch.Tensor, layer: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """``(expert ids [T, k], weights [T, k])`` of DeepSeek-V3's noaux_tc grouped top-k."""
        c = self.config
        scores = torch.sigmoid(x.float() @ layer["gate"].t())
        choice = scores + layer["bias"] if layer["bias"] is not None else scores
        tokens, experts = choice.shape
        groups = c.get("n_group") or 1
        grouped = choice.view(tokens, groups, experts // groups)
        group_scores = grouped.topk(min(2, experts // groups), dim=-1)[0].sum(-1)
        best_groups = group_scores.topk(c.get("topk_group") or groups, dim=-1)[1]
        mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, best_groups, True)
        choice = choice.masked_fill(~mask.repeat_interleave(experts // groups, dim=1), float("-inf"))
        ids = choice.topk(c["num_experts_per_tok"], dim=-1)[1]
        weights = scores.gather(1, ids)
        if c.get("norm_topk_prob", True):
            weights = weights / weights.sum(-1, keepdim=True)
        return ids, weights * c.get("routed_scaling_factor", 1.0)

    def _attention(
        self, x: torch.Tensor, layer: dict, positions: torch.Tensor, cache: dict | None
    ) -> torch.Tensor:
        """MLA over the new tokens ``x`` ``[t, hidden]``; ``cache`` holds earlier keys/values (or None)."""
        c = self.config
        heads, nope, rope, v_dim = (
            c["num_attention_heads"], c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"],
        )  # fmt: skip
        eps, theta = c.get("rms_norm_eps", 1e-6), float(c.get("rope_theta", 10000.0))
        t = x.shape[0]
        q = layer["q_b"](_rms_norm(layer["q_a"](x), layer["q_a_norm"], eps)).view(t, heads, nope + rope)
        q_nope, q_pe = q.split([nope, rope], dim=-1)
        latent, k_pe = layer["kv_a"](x).split([c["kv_lora_rank"], rope], dim=-1)
        kv = layer["kv_b"](_rms_norm(latent, layer["kv_a_norm"], eps)).view(t, heads, nope + v_dim)
        k_nope, v = kv.split([nope, v_dim], dim=-1)
        q_pe = _rope_interleaved(q_pe, positions, theta)
        k_pe = _rope_interleaved(k_pe.view(t, 1, rope), positions, theta).expand(t, heads, rope)
        query = torch.cat([q_nope, q_pe], dim=-1).double()
        key, value = torch.cat([k_nope, k_pe], dim=-1).double(), v.double()
        if cache is not None:
            if "key" in cache:
                key, value = torch.cat([cache["key"], key]), torch.cat([cache["value"], value])
            cache["key"], cache["value"] = key, value
        logits = torch.einsum("qhd,khd->hqk", query, key) / math.sqrt(nope + rope)
        causal = torch.arange(key.shape[0])[None, :] <= positions[:, None]
        probs = logits.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        out = torch.einsum("hqk,khd->qhd", probs, value).reshape(t, heads * v_dim)
        return layer["o"](out.to(x.dtype))

    @torch.no_grad()
    def logits(self, token_ids: list[int]) -> torch.Tensor:
        """float32 logits ``[T, vocab]`` for one sequence (full recomputation, no cache)."""
        with _single_threaded():
            return self._forward(token_ids, 0, None)

    def _forward(self, token_ids: list[int], start: int, caches: list[dict] | None) -> torch.Tensor:
        """Logits of tokens at positions ``start…``; ``caches`` (one dict per layer) hold earlier ones.

        Every operation but attention is row-wise (per-token activation
        quantization included), so a cached step computes exactly what a full
        recomputation computes for the last position.
        """
        eps = self.config.get("rms_norm_eps", 1e-6)
        ids = torch.tensor(token_ids, dtype=torch.long)
        positions = torch.arange(start, start + len(token_ids))
        h = self.embed[ids]
        for i, layer in enumerate(self.layers):
            cache = caches[i] if caches is not None else None
            h = h + self._attention(_rms_norm(h, layer["input_norm"], eps), layer, positions, cache)
            x = _rms_norm(h, layer["post_norm"], eps)
            if "mlp" in layer:
                h = h + self._mlp(x, layer["mlp"])
                continue
            ids_k, weights = self._route(x, layer)
            routed = layer["experts"](x, ids_k, weights)
            shared = self._mlp(x, layer["shared"]) if "shared" in layer else 0
            h = h + routed + shared
        return self.lm_head(_rms_norm(h, self.norm, eps)).float()

    @torch.no_grad()
    def greedy(self, prompt_ids: list[int], max_new_tokens: int) -> GreedyResult:
        """Greedy decoding with cached keys/values (same numbers as full recomputation)."""
        caches: list[dict] = [{} for _ in self.layers]
        out = GreedyResult([], [])
        new, start = list(prompt_ids), 0
        for _ in range(max_new_tokens):
            with _single_threaded():
                logits = self._forward(new, start, caches)[-1]
            logprobs = torch.log_softmax(logits.double(), dim=-1)
            token = int(torch.argmax(logprobs))
            out.token_ids.append(token)
            out.logprobs.append(float(logprobs[token]))
            start += len(new)
            new = [token]
        return out

    @torch.no_grad()
    def token_logprobs(self, token_ids: list[int]) -> torch.Tensor:
        """Log-softmax ``[T-1, vocab]`` (float64) of positions 1.. given their prefixes."""
        return torch.log_softmax(self.logits(token_ids)[:-1].double(), dim=-1)
