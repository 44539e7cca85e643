"""The vLLM ``QuantizationConfig`` for ModelSlim checkpoints, registered as ``ascend``.

``vllm serve ./model --quantization ascend`` (or ``modelslim``) makes vLLM
build this config without arguments (``get_config_filenames()`` is empty, as in
vLLM Ascend) and then call :meth:`AscendModelSlimConfig.maybe_update_config`
with the model folder, which loads ``quant_model_description.json`` and reads
the safetensors headers. For every layer vLLM then asks
:meth:`~AscendModelSlimConfig.get_quant_method`, which resolves the layer's
quant type (packed shards included) and returns the scheme's method, or vLLM's
unquantized method for ``FLOAT`` layers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from vllm.config import get_current_vllm_config
from vllm.logger import init_logger
from vllm.model_executor.layers.attention.attention import Attention
from vllm.model_executor.layers.fused_moe import RoutedExperts
from vllm.model_executor.layers.linear import LinearBase, RowParallelLinear, UnquantizedLinearMethod
from vllm.model_executor.layers.quantization import register_quantization_config
from vllm.model_executor.layers.quantization.base_config import (
    QuantizationConfig,
    QuantizeMethodBase,
)
from vllm.model_executor.layers.vocab_parallel_embedding import (
    VocabParallelEmbedding,
)

from vllm_modelslim.format.checkpoint import CheckpointIndex
from vllm_modelslim.format.description import QuantDescription, load_description
from vllm_modelslim.format.errors import CheckpointTensorError, DescriptionFormatError, UnknownQuantTypeError
from vllm_modelslim.format.kv_cache_c8 import (
    C8,
    CACHE_SCALE_RENAMES,
    c8_attention_prefixes,
    c8_tensor_errors,
    kv_channels_of,
)
from vllm_modelslim.format.layer_lookup import LayerQuant, resolve_layer
from vllm_modelslim.format.packed_modules import checkpoint_layer_prefix, packed_modules_for
from vllm_modelslim.schemes import LayerContext, require_scheme_class
from vllm_modelslim.schemes.attention import AttentionContext
from vllm_modelslim.schemes.linear_method import ModelSlimLinearMethod
from vllm_modelslim.schemes.moe import MoEContext
from vllm_modelslim.schemes.moe_method import ModelSlimFusedMoEMethod
from vllm_modelslim.schemes.norm_bias import NORM_BIAS_SUFFIX, NormBiasTracker, register_rms_norm_bias

logger = init_logger(__name__)

QUANTIZATION_METHOD_NAMES = ("ascend", "modelslim")
"""Names accepted by ``--quantization`` (``ascend`` as in vLLM Ascend's docs)."""

KV_CACHE_STORAGE_OPTION = "modelslim_kv_cache_storage"
"""``additional_config`` key: ``"int8"`` (default) stores a C8 cache as int8 where the attention
backend allows it, ``"model-dtype"`` keeps the model dtype (same numerics, no memory saving)."""

_UNSUPPORTED_SETTINGS = {
    "fa_quant_type": "attention (FA) quantization",
    "indexer_quant_type": "sparse-attention indexer quantization",
}


def unsupported_layer_error(
    prefix: str, quant_type: str, what: str, description: QuantDescription
) -> UnknownQuantTypeError:
    """The error for a quantized layer kind that has no scheme (embeddings, lm_head)."""
    return UnknownQuantTypeError(
        f"{what} ({quant_type}) is not supported yet; the layer must be FLOAT",
        file=description.source,
        layer=prefix,
    )


def norm_bias_shape_errors(checkpoint: CheckpointIndex, sizes: set[int]) -> list[CheckpointTensorError]:
    """One error per stored ``*norm.bias`` that is not a vector of a norm's size (``sizes``)."""
    return [
        CheckpointTensorError(
            f"norm bias {info.name!r} has shape {list(info.shape)}; a norm bias is one vector of the "
            f"norm's size ({sorted(sizes)})",
            file=info.file,
            layer=info.name.removesuffix(".bias"),
        )
        for info in checkpoint
        if info.name.endswith(NORM_BIAS_SUFFIX)
        and (len(info.shape) != 1 or (sizes and info.shape[0] not in sizes))
    ]


def unsupported_feature_errors(description: QuantDescription) -> list[UnknownQuantTypeError]:
    """One error per global setting that asks for a feature this plugin lacks (FA, indexer quantization)."""
    return [
        UnknownQuantTypeError(
            f"{key}={description.settings[key]!r} asks for {feature}, which this plugin "
            "does not implement yet; serving without it would silently change the numerics",
            file=description.source,
        )
        for key, feature in _UNSUPPORTED_SETTINGS.items()
        if description.settings.get(key)
    ]


class AscendModelSlimConfig(QuantizationConfig):
    """Quantization config of a ModelSlim (msmodelslim) checkpoint.

    Args:
        quant_description: an already-decoded description mapping (tests,
            ``from_config``); None to load it from the model folder later.
    """

    def __init__(self, quant_description: Mapping[str, Any] | None = None):
        super().__init__()
        self.description: QuantDescription | None = (
            QuantDescription.from_mapping(quant_description) if quant_description else None
        )
        self.checkpoint: CheckpointIndex | None = None
        self.model_type: str | None = None
        self.norm_bias_tracker: NormBiasTracker | None = None
        self.c8_prefixes: list[str] = []
        self.kv_channels: int | None = None
        self.num_hidden_layers: int | None = None
        self._name_map: dict[str, str] = {}

    # --- QuantizationConfig interface -------------------------------------

    def get_name(self) -> str:
        return "ascend"

    def get_supported_act_dtypes(self) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16, torch.float32]

    @classmethod
    def get_min_capability(cls) -> int:
        # Plain torch kernels: any GPU that runs vLLM runs them.
        return 0

    @staticmethod
    def get_config_filenames() -> list[str]:
        # The description is located in maybe_update_config, which also
        # accepts the older quant_model_description_<type>.json names.
        return []

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> AscendModelSlimConfig:
        return cls(config)

    def maybe_update_config(
        self, model_name: str, hf_config: Any = None, revision: str | None = None
    ) -> None:
        """Load the description and the checkpoint headers from the model folder.

        Raises:
            DescriptionNotFoundError, AmbiguousDescriptionError,
            DescriptionFormatError: see :func:`load_description`.
            CheckpointTensorError: a weight file cannot be read.
        """
        if hf_config is not None:
            self.model_type = getattr(hf_config, "model_type", None)
            text_config = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
            self.kv_channels = kv_channels_of(text_config)
            self.num_hidden_layers = getattr(text_config, "num_hidden_layers", None)
        folder = Path(model_name)
        if self.description is None:
            self.description = load_description(folder)
        if folder.is_dir() and self.checkpoint is None:
            self.checkpoint = CheckpointIndex.scan(folder)
        self._reject_unsupported_features(self.description)
        self.c8_prefixes = c8_attention_prefixes(self.description)
        for error in c8_tensor_errors(self.description, self.checkpoint, self.kv_channels):
            raise error
        self._track_norm_biases(self.description, hf_config)
        logger.info(
            "ModelSlim description %s: quant types %s",
            self.description.source,
            sorted(self.description.quant_types()),
        )

    def apply_vllm_mapper(self, hf_to_vllm_mapper: Any) -> None:
        """Let description entries answer under vLLM's module names too."""
        if self.description is None:
            return
        rename = {}
        for name in self.description.entries:
            mapped = hf_to_vllm_mapper.map_name(name)
            if mapped is not None and mapped != name:
                rename[name] = mapped
                self._name_map[mapped.removesuffix(".weight")] = name.removesuffix(".weight")
        if rename:
            self.description = self.description.with_renamed_entries(rename)

    def get_quant_method(self, layer: torch.nn.Module, prefix: str) -> QuantizeMethodBase | None:
        """The method for ``layer``; raises a ModelSlimFormatError for bad descriptions."""
        if isinstance(layer, LinearBase):
            prefix = checkpoint_layer_prefix(self.model_type, prefix)
            return self._linear_method(layer, prefix) or UnquantizedLinearMethod()
        if isinstance(layer, VocabParallelEmbedding):  # also ParallelLMHead
            self._reject_quantized(prefix, "a quantized embedding or lm_head", required=False)
            return None  # vLLM's unquantized embedding
        if isinstance(layer, RoutedExperts):
            return self._moe_method(layer, prefix)  # None: vLLM's unquantized fused MoE
        if isinstance(layer, Attention):
            return self._attention_method(prefix)  # None: a KV cache in the model dtype
        return None

    def get_cache_scale_mapper(self) -> Any:  # type: ignore[override]
        """Checkpoint → vLLM names of KV-cache tensors: vLLM's defaults, plus the C8 tensors.

        C8: ``*.{k,v}_proj.kv_cache_{scale,offset}`` → ``*.attn.{k,v}_cache_{scale,offset}``.
        """
        from vllm.model_executor.models.utils import WeightsMapper

        mapper = QuantizationConfig.get_cache_scale_mapper()
        if not self.c8_prefixes:
            return mapper
        renames = {re.compile(pattern): new for pattern, new in CACHE_SCALE_RENAMES.items()}
        return WeightsMapper(orig_to_new_regex=renames) | mapper

    # --- helpers -------------------------------------------------------------

    def _require_description(self) -> QuantDescription:
        if self.description is None:
            raise DescriptionFormatError(
                "no ModelSlim description was loaded; vLLM did not call maybe_update_config "
                "and no quant_description was given"
            )
        return self.description

    def _resolve(self, prefix: str, *, required: bool = True) -> LayerQuant | None:
        mapping = packed_modules_for(self.model_type, self.packed_modules_mapping)
        return resolve_layer(self._require_description(), prefix, mapping, required=required)

    def _scheme_class(self, layer_quant: LayerQuant, layer_type: str) -> type:
        return self._scheme_class_for(layer_quant.quant_type, layer_type, layer_quant.prefix)

    def _scheme_class_for(self, quant_type: str, layer_type: str, layer: str) -> type:
        source = self._require_description().source
        return require_scheme_class(quant_type, layer_type, layer=layer, file=source)

    def _linear_method(self, layer: LinearBase, prefix: str) -> QuantizeMethodBase | None:
        description = self._require_description()
        layer_quant = self._resolve(prefix)
        if layer_quant is None or layer_quant.is_float:
            return None
        scheme_cls = self._scheme_class(layer_quant, "linear")
        context = LayerContext(
            prefix=prefix,
            quant_type=layer_quant.quant_type,
            shard_prefixes=tuple(self._name_map.get(s, s) for s in layer_quant.shard_prefixes),
            description=description,
            checkpoint=self.checkpoint,
            row_parallel=isinstance(layer, RowParallelLinear),
        )
        tracker = self.norm_bias_tracker
        return ModelSlimLinearMethod(scheme_cls(context), after_loading=tracker.check if tracker else None)

    def _moe_method(self, layer: RoutedExperts, prefix: str) -> QuantizeMethodBase | None:
        description = self._require_description()
        layer_quant = self._resolve(prefix)
        if layer_quant is None or layer_quant.is_float:
            return None
        scheme_cls = self._scheme_class(layer_quant, "moe")
        context = MoEContext(
            prefix=prefix,
            quant_type=layer_quant.quant_type,
            checkpoint_prefix=self._name_map.get(prefix, prefix),
            projections=(layer.ckpt_gate_proj_name, layer.ckpt_up_proj_name or "", layer.ckpt_down_proj_name),
            num_experts=layer.moe_config.num_logical_experts,
            description=description,
            checkpoint=self.checkpoint,
        )
        return ModelSlimFusedMoEMethod(scheme_cls(context), layer.moe_config)

    def _attention_method(self, prefix: str) -> QuantizeMethodBase | None:
        checkpoint_prefix = self._name_map.get(prefix, prefix).removesuffix(".attn")
        if checkpoint_prefix not in self.c8_prefixes:
            return None
        description = self._require_description()
        context = AttentionContext(
            prefix=prefix,
            checkpoint_prefix=checkpoint_prefix,
            description=description,
            checkpoint=self.checkpoint,
            kv_channels=self.kv_channels,
            int8_storage=self._int8_kv_storage(),
        )
        return self._scheme_class_for(C8, "attention", checkpoint_prefix)(self, context)

    def _int8_kv_storage(self) -> bool:
        """Store C8 caches as int8: every layer is C8 (one cache layout) and the user did not opt out."""
        option = get_current_vllm_config().additional_config
        storage = option.get(KV_CACHE_STORAGE_OPTION, "int8") if isinstance(option, dict) else "int8"
        if storage not in ("int8", "model-dtype"):
            raise ValueError(
                f"additional_config {KV_CACHE_STORAGE_OPTION}={storage!r}: use 'int8' or 'model-dtype'"
            )
        return storage == "int8" and len(self.c8_prefixes) == self.num_hidden_layers

    def _reject_quantized(self, prefix: str, what: str, *, required: bool) -> None:
        """Raise if the description quantizes a layer kind that has no scheme yet."""
        layer_quant = self._resolve(prefix, required=required)
        if layer_quant is not None and not layer_quant.is_float:
            raise unsupported_layer_error(prefix, layer_quant.quant_type, what, self._require_description())

    @staticmethod
    def _reject_unsupported_features(description: QuantDescription) -> None:
        for error in unsupported_feature_errors(description):
            raise error

    def _track_norm_biases(self, description: QuantDescription, hf_config: Any) -> None:
        if self.checkpoint is not None:  # the tensors are the truth; the description may omit them
            names = {t.name for t in self.checkpoint if t.name.endswith(NORM_BIAS_SUFFIX)}
            sizes = {getattr(hf_config, "hidden_size", None), getattr(hf_config, "head_dim", None)} - {None}
            for error in norm_bias_shape_errors(self.checkpoint, sizes):
                raise error
        else:
            names = {k for k in description.entries if k.endswith(NORM_BIAS_SUFFIX)}
        if names and not register_rms_norm_bias():
            raise UnknownQuantTypeError(
                "the checkpoint has anti-outlier norm biases, but another plugin replaced vLLM's RMSNorm, "
                "so they cannot be applied",
                file=description.source,
            )
        self.norm_bias_tracker = NormBiasTracker(names, description.source)


def register_quantization_methods() -> None:
    """Register :class:`AscendModelSlimConfig` with vLLM as ``ascend`` and ``modelslim``."""
    for name in QUANTIZATION_METHOD_NAMES:
        register_quantization_config(name)(AscendModelSlimConfig)
