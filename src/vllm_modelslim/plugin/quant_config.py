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
from vllm.config import get_current_vllm_config, get_current_vllm_config_or_none
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
from vllm_modelslim.format.checkpoint_checks import NORM_BIAS_SUFFIX, unsupported_layer_error
from vllm_modelslim.format.description import QuantDescription, load_description
from vllm_modelslim.format.errors import CheckpointTensorError, DescriptionFormatError, UnknownQuantTypeError
from vllm_modelslim.format.kv_cache_c8 import CACHE_SCALE_RENAMES, kv_channels_of
from vllm_modelslim.format.layer_plan import LayerPlan, PlannedLayer, plan_layers
from vllm_modelslim.format.packed_modules import checkpoint_layer_prefix, packed_modules_for
from vllm_modelslim.plugin.compatibility import QUANTIZATION_METHOD_NAMES
from vllm_modelslim.plugin.dequantized_linear_method import (
    DEQUANTIZABLE_TYPES,
    DEQUANTIZED_LAYER_NAMES,
    DequantizedLinearMethod,
)
from vllm_modelslim.plugin.extra_bias import (
    EXTRA_BIAS_NAME,
    BiasedFloatLinearMethod,
    extra_bias_renames,
    stored_bias_shards,
)
from vllm_modelslim.plugin.kv_cache_method import C8KVCacheMethod
from vllm_modelslim.plugin.linear_method import ModelSlimLinearMethod
from vllm_modelslim.plugin.mixed_linear_method import ModelSlimMixedLinearMethod
from vllm_modelslim.plugin.moe_method import ModelSlimFusedMoEMethod
from vllm_modelslim.plugin.norm_bias import NormBiasTracker, register_rms_norm_bias
from vllm_modelslim.schemes import LayerContext, LinearScheme
from vllm_modelslim.schemes.attention import AttentionContext
from vllm_modelslim.schemes.moe import MoEContext

logger = init_logger(__name__)


KV_CACHE_STORAGE_OPTION = "modelslim_kv_cache_storage"
"""``additional_config`` key: ``"int8"`` (default) stores a C8 cache as int8 where the attention
backend allows it, ``"model-dtype"`` keeps the model dtype (same numerics, no memory saving)."""


def is_kv_consumer() -> bool:
    """True when the vLLM config being built is a KV consumer (``kv_role`` consumer or both).

    W8A8_MIX runs its static math there (decode side of prefill/decode disaggregation).
    """
    config = get_current_vllm_config_or_none()
    kv_transfer = None if config is None else config.kv_transfer_config
    return kv_transfer is not None and bool(kv_transfer.is_kv_consumer)


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
        self.plan: LayerPlan | None = None
        self._config_dict: dict[str, Any] = {}
        self._partitions_checked = False
        self._name_map: dict[str, str] = {}
        self._extra_bias_renames: dict[str, str] = {}  # stored .bias of bias-less vLLM layers → loadable name

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
        """Load the description and the checkpoint headers, plan every layer, stop at the first problem.

        The layer plan (:func:`~vllm_modelslim.format.layer_plan.plan_layers`) is the
        one ``vllm-modelslim inspect`` reports; :meth:`get_quant_method` looks layers up in it.

        Raises:
            DescriptionNotFoundError, AmbiguousDescriptionError,
            DescriptionFormatError: see :func:`load_description`.
            CheckpointTensorError: a weight file cannot be read.
            ModelSlimFormatError: the plan's first problem (a subclass naming layer and file).
        """
        if hf_config is not None:
            self.model_type = getattr(hf_config, "model_type", None)
            text_config = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
            self.kv_channels = kv_channels_of(text_config)
            self.num_hidden_layers = getattr(text_config, "num_hidden_layers", None)
            as_dict = getattr(text_config, "to_dict", None)
            self._config_dict = {**(as_dict() if callable(as_dict) else vars(text_config))}
            self._config_dict["model_type"] = self.model_type
        folder = Path(model_name)
        if self.description is None:
            self.description = load_description(folder)
        if folder.is_dir() and self.checkpoint is None:
            self.checkpoint = CheckpointIndex.scan(folder)
        self.plan = plan_layers(self._config_dict, self.description, self.checkpoint)
        self.plan.raise_first_error()
        self.c8_prefixes = [p.shards[0] for p in self.plan.layers.values() if p.layer_type == "attention"]
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
        """The method for ``layer``, from the layer plan; raises a ModelSlimFormatError for bad input."""
        self._check_partitions_once()
        if isinstance(layer, LinearBase):
            vllm_prefix, prefix = prefix, checkpoint_layer_prefix(self.model_type, prefix)
            extra_bias = self._extra_bias(layer, vllm_prefix, prefix)
            method = self._linear_method(layer, prefix, extra_bias)
            if method is None and extra_bias:  # FLOAT layer with a stored bias
                return BiasedFloatLinearMethod(prefix, self._require_description().source)
            return method or UnquantizedLinearMethod()
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

    def get_checkpoint_weight_mapper(self) -> Any:  # type: ignore[override]
        """The checkpoint mapper of vLLM, plus the stored float biases of bias-less vLLM layers.

        ``<shard>.bias`` → ``<shard>.modelslim_bias`` for the layers :meth:`_extra_bias`
        chose (see :mod:`~vllm_modelslim.plugin.extra_bias`); vLLM would drop them silently.
        """
        from vllm.model_executor.models.utils import WeightsMapper

        mapper = QuantizationConfig.get_checkpoint_weight_mapper()
        if not self._extra_bias_renames:
            return mapper
        layers = "|".join(re.escape(name.removesuffix(".bias")) for name in self._extra_bias_renames)
        pattern = re.compile(rf"^({layers})\.bias$")
        return mapper | WeightsMapper(orig_to_new_regex={pattern: rf"\1.{EXTRA_BIAS_NAME}"})

    # --- helpers -------------------------------------------------------------

    def _require_description(self) -> QuantDescription:
        if self.description is None:
            raise DescriptionFormatError(
                "no ModelSlim description was loaded; vLLM did not call maybe_update_config "
                "and no quant_description was given"
            )
        return self.description

    def _layer_plan(self) -> LayerPlan:
        """The plan made in :meth:`maybe_update_config` (made now, from the description only, without it)."""
        if self.plan is None:
            self.plan = plan_layers(self._config_dict, self._require_description(), self.checkpoint)
        return self.plan

    def _checkpoint_name(self, prefix: str) -> str:
        """``prefix`` in the checkpoint's naming (undoes vLLM's ``hf_to_vllm_mapper`` renames)."""
        if prefix in self._name_map or not self._name_map:
            return self._name_map.get(prefix, prefix)
        head, _, name = prefix.rpartition(".")
        shards = packed_modules_for(self.model_type, self.packed_modules_mapping).get(name)
        first = self._name_map.get(f"{head}.{shards[0]}") if shards else None
        return f"{first.rpartition('.')[0]}.{name}" if first else prefix

    def _planned_linear(
        self, prefix: str, layer: torch.nn.Module | None, *, required: bool
    ) -> PlannedLayer | None:
        """The plan of the linear (or embedding) layer ``prefix``; raises its first problem."""
        planned = self._layer_plan().linear_layer(
            self._checkpoint_name(prefix),
            self.packed_modules_mapping,
            row_parallel=isinstance(layer, RowParallelLinear) if layer is not None else None,
            required=required,
        )
        if planned is not None:
            planned.raise_first_error()
        return planned

    def _check_partitions_once(self) -> None:
        """Before vLLM builds the first layer: every planned layer splits over the tensor-parallel ranks.

        vLLM's own checks are bare asserts inside the layers' constructors; the plan's
        errors name the layer and the file. Routed experts are checked per layer
        (their parallel layout comes with the layer).
        """
        if self._partitions_checked:
            return
        self._partitions_checked = True
        config = get_current_vllm_config_or_none()
        tp = config.parallel_config.tensor_parallel_size if config is not None else 1
        plan = self._layer_plan()
        for planned in plan.layers.values():
            if planned.layer_type == "linear":
                for error in plan.partition_errors(planned.prefix, tp):
                    raise error

    def _extra_bias(self, layer: LinearBase, vllm_prefix: str, prefix: str) -> bool:
        """True when vLLM builds ``layer`` without a bias but a shard stores a float ``.bias``.

        Records the renames for :meth:`get_checkpoint_weight_mapper`.

        Raises:
            CheckpointTensorError: the layer is MLA's ``kv_b_proj`` (vLLM reads its weight
                directly, so a bias cannot be applied).
        """
        if getattr(layer, "has_bias", True) or self.checkpoint is None:
            return False
        planned = self._planned_linear(prefix, layer, required=True)
        shards = planned.shards if planned is not None else (self._checkpoint_name(prefix),)
        if not stored_bias_shards(self.checkpoint, shards):
            return False
        if prefix.rpartition(".")[2] in DEQUANTIZED_LAYER_NAMES:
            raise CheckpointTensorError(
                "the checkpoint stores a float .bias for this layer, which vLLM's MLA uses without a bias",
                file=self._require_description().source,
                layer=prefix,
            )
        self._extra_bias_renames.update(extra_bias_renames(vllm_prefix, shards))
        return True

    def _linear_method(
        self, layer: LinearBase, prefix: str, extra_bias: bool = False
    ) -> QuantizeMethodBase | None:
        description = self._require_description()
        planned = self._planned_linear(prefix, layer, required=True)
        if planned is None or planned.is_float:
            return None
        tracker = self.norm_bias_tracker
        after_loading = tracker.check if tracker else None
        if planned.is_mixed:  # shards of different quant types: one scheme (or FLOAT) per shard
            schemes = [
                None if part.is_float else self._linear_scheme(layer, part.prefix, part)
                for part in planned.shard_layers
            ]
            return ModelSlimMixedLinearMethod(
                planned.prefix, schemes, description.source, after_loading, extra_bias=extra_bias
            )
        method = ModelSlimLinearMethod(
            self._linear_scheme(layer, prefix, planned), after_loading=after_loading, extra_bias=extra_bias
        )
        if prefix.rpartition(".")[2] in DEQUANTIZED_LAYER_NAMES:  # MLA reads kv_b_proj's float weight
            if planned.quant_type not in DEQUANTIZABLE_TYPES:
                raise unsupported_layer_error(
                    prefix, planned.quant_type, "MLA's kv_b_proj other than int8 per-channel", description
                )
            return DequantizedLinearMethod(method, prefix)
        return method

    def _linear_scheme(self, layer: LinearBase, prefix: str, planned: PlannedLayer) -> LinearScheme:
        """The scheme instance serving ``planned`` (a whole layer, or one shard of a mixed layer)."""
        assert planned.scheme_class is not None
        context = LayerContext(
            prefix=prefix,
            quant_type=planned.quant_type,
            shard_prefixes=planned.shards,
            description=self._require_description(),
            checkpoint=self.checkpoint,
            row_parallel=isinstance(layer, RowParallelLinear),
            kv_consumer=is_kv_consumer(),
        )
        return planned.scheme_class(context)

    def _moe_method(self, layer: RoutedExperts, prefix: str) -> QuantizeMethodBase | None:
        description = self._require_description()
        projections = (layer.ckpt_gate_proj_name, layer.ckpt_up_proj_name or "", layer.ckpt_down_proj_name)
        plan = self._layer_plan()
        planned = plan.moe_layer(
            self._name_map.get(prefix, prefix), projections, layer.moe_config.num_logical_experts
        )
        planned.raise_first_error()
        if planned.is_float:
            return None
        for error in plan.partition_errors(planned.prefix, layer.moe_config.moe_parallel_config.tp_size):
            raise error
        assert planned.scheme_class is not None
        scheme_cls = planned.scheme_class
        context = MoEContext(
            prefix=prefix,
            quant_type=planned.quant_type,
            checkpoint_prefix=planned.prefix,
            projections=projections,
            num_experts=layer.moe_config.num_logical_experts,
            description=description,
            checkpoint=self.checkpoint,
            kv_consumer=is_kv_consumer(),
        )
        return ModelSlimFusedMoEMethod(scheme_cls(context), layer.moe_config)

    def _attention_method(self, prefix: str) -> QuantizeMethodBase | None:
        checkpoint_prefix = self._name_map.get(prefix, prefix).removesuffix(".attn")
        planned = self._layer_plan().get(f"{checkpoint_prefix}.attn")
        if planned is None or planned.layer_type != "attention":
            return None  # not a C8 layer: vLLM's float cache
        planned.raise_first_error()
        assert planned.scheme_class is not None
        description = self._require_description()
        context = AttentionContext(
            prefix=prefix,
            checkpoint_prefix=checkpoint_prefix,
            description=description,
            checkpoint=self.checkpoint,
            kv_channels=self.kv_channels,
            int8_storage=self._int8_kv_storage(),
        )
        return C8KVCacheMethod(self, planned.scheme_class(context))

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
        planned = self._planned_linear(prefix, None, required=required)
        if planned is not None and not planned.is_float:
            raise unsupported_layer_error(prefix, planned.quant_type, what, self._require_description())

    def _track_norm_biases(self, description: QuantDescription, hf_config: Any) -> None:
        if self.checkpoint is not None:  # the tensors are the truth; the description may omit them
            names = {t.name for t in self.checkpoint if t.name.endswith(NORM_BIAS_SUFFIX)}  # shapes: the plan
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
