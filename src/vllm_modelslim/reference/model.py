"""Reference forward of a (ModelSlim-quantized) checkpoint: Hugging Face model + reference linears.

The model architecture comes from ``transformers`` (the checkpoint's
``config.json``), runs in float32, every linear layer the description
quantizes is replaced by :class:`ReferenceQuantizedLinear`, and the routed
experts of MoE layers by :class:`~vllm_modelslim.reference.moe.ReferenceExperts`; an int8 KV cache
(C8) is reproduced by :class:`~vllm_modelslim.reference.kv_cache.QuantDequantKVCache`. It has no paged
cache, no batching and no fused kernels: slow, simple, and independent of
vLLM, which makes it the oracle for the end-to-end tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from vllm_modelslim.format.description import (
    FLOAT,
    QuantDescription,
    find_description_file,
    parse_description_file,
)
from vllm_modelslim.reference.compressed_tensors_linear import ReferenceCompressedTensorsLinear
from vllm_modelslim.reference.kv_cache import QuantDequantKVCache, c8_layer_params
from vllm_modelslim.reference.moe import ReferenceExperts, float_linear
from vllm_modelslim.reference.mtp import pop_mtp_tensors
from vllm_modelslim.reference.quantized_linear import ReferenceQuantizedLinear


class _BiasedNorm(torch.nn.Module):
    """``norm(x) + bias``: the anti-outlier RMSNorm of msmodelslim's m4 smoothing."""

    def __init__(self, norm: torch.nn.Module, bias: torch.Tensor):
        super().__init__()
        self.norm = norm
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x) + self.bias


@dataclass
class GreedyResult:
    """Greedy continuation: token ids and the log-probability of each chosen token."""

    token_ids: list[int]
    logprobs: list[float]


class ReferenceModel:
    """Pure-torch forward of the checkpoint in ``model_dir``.

    Args:
        model_dir: a ModelSlim output folder, an LLM-Compressor (compressed-tensors)
            checkpoint, or a plain Hugging Face checkpoint (then nothing is quantized).
            A causal LM, or an encoder (``AutoModel``, e.g. BERT) when config.json
            names no ``*ForCausalLM`` architecture.
        dtype: compute dtype outside the quantized linears (float32 default).
        kv_consumer: compute W8A8_MIX layers as a decode (KV-consumer) instance does.

    Raises:
        ValueError: checkpoint tensors that the model does not consume, or
            model parameters that the checkpoint does not provide.
    """

    def __init__(
        self,
        model_dir: str | Path,
        dtype: torch.dtype = torch.float32,
        kv_consumer: bool = False,
    ):
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

        model_dir = Path(model_dir)
        config = AutoConfig.from_pretrained(str(model_dir))
        causal = any(a.endswith("ForCausalLM") for a in (config.architectures or ["ForCausalLM"]))
        self.model = (AutoModelForCausalLM if causal else AutoModel).from_config(config, dtype=dtype).eval()
        self.dtype = dtype
        tensors: dict[str, torch.Tensor] = {}
        for path in sorted(model_dir.glob("*.safetensors")):
            tensors.update(load_file(str(path)))
        self.mtp_tensors = pop_mtp_tensors(tensors, config)  # not read by the main model's forward
        self.description = self._description(model_dir)
        self.kv_consumer = kv_consumer
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        self.kv_cache_quant = c8_layer_params(tensors, kv_heads, head_dim)
        ct_config = getattr(config, "quantization_config", None)
        is_ct = isinstance(ct_config, dict) and ct_config.get("quant_method") == "compressed-tensors"
        self.ct_config: dict | None = ct_config if is_ct else None
        self.expert_layers = self._replace_experts(tensors)
        self.quantized_layers = self._replace_quantized_linears(tensors)
        if self.ct_config is not None:
            self.quantized_layers.update(self._replace_compressed_tensors_linears(tensors))
        norm_biases = {k: tensors.pop(k) for k in list(tensors) if k.endswith("norm.bias")}
        remaining = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
        missing, unexpected = self.model.load_state_dict(remaining, strict=False)
        missing = [k for k in missing if not k.endswith("rotary_emb.inv_freq")]
        unexpected = [k for k in unexpected if not k.endswith("position_ids")]  # a buffer old BERTs saved
        if missing or unexpected:
            raise ValueError(f"checkpoint/model mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self._add_norm_biases(norm_biases)

    @staticmethod
    def _description(model_dir: Path) -> QuantDescription | None:
        if not any(model_dir.glob("quant_model_description*.json")):
            return None
        return parse_description_file(find_description_file(model_dir))

    def _replace_experts(self, tensors: dict[str, torch.Tensor]) -> dict[str, set[str]]:
        """Replace each routed-experts module stored per expert by :class:`ReferenceExperts`."""
        replaced: dict[str, set[str]] = {}
        config = self.model.config
        num_experts = next(
            (
                n
                for key in ("num_experts", "num_local_experts", "n_routed_experts")
                if (n := getattr(config, key, None))
            ),
            None,
        )
        for name, _module in list(self.model.named_modules()):
            stored = any(k.startswith(f"{name}.0.gate_proj.") for k in tensors)
            if not name.endswith(".experts") or not stored:
                continue
            experts = ReferenceExperts(name, num_experts, tensors, self._expert_projection, self.dtype)
            parent_name, _, child = name.rpartition(".")
            setattr(self.model.get_submodule(parent_name), child, experts)
            replaced[name] = experts.quant_types
        return replaced

    def _expert_projection(
        self, name: str, tensors: dict[str, torch.Tensor]
    ) -> tuple[Callable[[torch.Tensor], torch.Tensor], str | None]:
        """One expert projection: the description's quant type, the compressed-tensors group, or float."""
        if self.ct_config is not None:
            # Stored experts are Linear layers in the model LLM-Compressor calibrated.
            group = self._compressed_tensors_group(name, torch.nn.Linear(0, 0))
            if group is not None:
                group_name, args = group
                linear = ReferenceCompressedTensorsLinear(
                    tensors, args["weights"], args.get("input_activations")
                )
                return linear, f"compressed-tensors {group_name}"
        quant_type = self.description.quant_type(f"{name}.weight") if self.description else None
        if quant_type in (None, FLOAT):
            return float_linear(tensors["weight"], self.dtype), None
        return ReferenceQuantizedLinear(quant_type, tensors, None, self.kv_consumer), quant_type

    def _compressed_tensors_group(self, name: str, module: torch.nn.Module) -> tuple[str, dict] | None:
        """``(group name, its args)`` of the first ``config_groups`` entry that targets ``name``."""
        from compressed_tensors.utils.match import is_match

        assert self.ct_config is not None
        ignore = self.ct_config.get("ignore") or []
        for group_name, group in self.ct_config["config_groups"].items():
            if is_match(name, module, group["targets"], ignore):
                return group_name, group
        return None

    def _swap_linear(
        self,
        name: str,
        tensors: dict[str, torch.Tensor],
        build: Callable[[dict[str, torch.Tensor], torch.Tensor | None], torch.nn.Module],
    ) -> None:
        """Replace linear ``name`` by ``build(tensors by suffix, bias)``, popping them from ``tensors``."""
        prefix = f"{name}."
        layer_tensors = {k[len(prefix) :]: tensors.pop(k) for k in list(tensors) if k.startswith(prefix)}
        bias = layer_tensors.pop("bias", None)
        parent_name, _, child = name.rpartition(".")
        parent = self.model.get_submodule(parent_name) if parent_name else self.model
        setattr(parent, child, build(layer_tensors, bias))

    def _replace_quantized_linears(self, tensors: dict[str, torch.Tensor]) -> dict[str, str]:
        replaced: dict[str, str] = {}
        if self.description is None:
            return replaced
        for name, module in list(self.model.named_modules()):
            if not isinstance(module, torch.nn.Linear):
                continue
            quant_type = self.description.quant_type(f"{name}.weight")
            if quant_type in (None, FLOAT):
                if module.bias is None and f"{name}.bias" in tensors:  # m4 smoothing's bias, FLOAT layer
                    parent_name, _, child = name.rpartition(".")
                    biased = torch.nn.Linear(module.in_features, module.out_features, dtype=self.dtype)
                    setattr(self.model.get_submodule(parent_name), child, biased)  # loaded with the rest
                continue
            self._swap_linear(
                name,
                tensors,
                lambda layer_tensors, bias, qt=quant_type: ReferenceQuantizedLinear(
                    qt, layer_tensors, bias, self.kv_consumer
                ),
            )
            replaced[name] = quant_type
        return replaced

    def _replace_compressed_tensors_linears(self, tensors: dict[str, torch.Tensor]) -> dict[str, str]:
        """Replace each linear an LLM-Compressor ``config_groups`` entry targets by its reference."""
        replaced: dict[str, str] = {}
        for name, module in list(self.model.named_modules()):
            group = (
                self._compressed_tensors_group(name, module) if isinstance(module, torch.nn.Linear) else None
            )
            if group is None:
                continue
            group_name, args = group
            self._swap_linear(
                name,
                tensors,
                lambda layer_tensors, bias, a=args: ReferenceCompressedTensorsLinear(
                    layer_tensors, a["weights"], a.get("input_activations"), bias
                ),
            )
            replaced[name] = f"compressed-tensors {group_name}"
        return replaced

    def _add_norm_biases(self, norm_biases: dict[str, torch.Tensor]) -> None:
        """Wrap each norm that has a ``<norm>.bias`` tensor: ``y = norm(x) + bias`` (spec §4.10)."""
        for name, bias in norm_biases.items():
            parent_name, _, child = name[: -len(".bias")].rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            setattr(parent, child, _BiasedNorm(getattr(parent, child), bias.to(self.dtype)))

    @torch.no_grad()
    def logits(self, token_ids: list[int]) -> torch.Tensor:
        """float32 logits ``[T, vocab]`` for one sequence."""
        ids = torch.tensor([token_ids], dtype=torch.long)
        cache = (
            QuantDequantKVCache(self.kv_cache_quant, config=self.model.config)
            if self.kv_cache_quant
            else None
        )
        return self.model(input_ids=ids, past_key_values=cache).logits[0].float()

    @torch.no_grad()
    def last_hidden_state(self, token_ids: list[int]) -> torch.Tensor:
        """Encoder output ``[T, hidden]`` (float32) for one sequence (encoder models such as BERT)."""
        ids = torch.tensor([token_ids], dtype=torch.long)
        return self.model(input_ids=ids).last_hidden_state[0].float()

    @torch.no_grad()
    def greedy(self, prompt_ids: list[int], max_new_tokens: int) -> GreedyResult:
        """Greedy decoding by full recomputation (no KV cache)."""
        ids = list(prompt_ids)
        out = GreedyResult([], [])
        for _ in range(max_new_tokens):
            logprobs = torch.log_softmax(self.logits(ids)[-1].double(), dim=-1)
            token = int(torch.argmax(logprobs))
            out.token_ids.append(token)
            out.logprobs.append(float(logprobs[token]))
            ids.append(token)
        return out

    @torch.no_grad()
    def token_logprobs(self, token_ids: list[int]) -> torch.Tensor:
        """Log-softmax ``[T-1, vocab]`` (float64) of positions 1.. given their prefixes."""
        return torch.log_softmax(self.logits(token_ids)[:-1].double(), dim=-1)
