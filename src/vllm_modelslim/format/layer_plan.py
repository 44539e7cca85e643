"""The layer plan: every layer of a ModelSlim checkpoint, its quant type, scheme and problems.

One function, :func:`plan_layers`, decides from ``config.json`` (a dict), the
parsed description and the safetensors headers, without vLLM and without
reading any weight:

* which vLLM layers the checkpoint has (unfused description entries are fused
  with the per-``model_type`` packed-module table, routed experts grouped into
  one ``experts`` layer, C8 attention layers taken from their KV-cache scales);
* each layer's quant type, scheme class (from the scheme registry), checkpoint
  shards and tensor-parallel role (column or row parallel);
* every problem the loader must stop at, each naming the layer and the file:
  undescribed or disagreeing shards, unknown quant types, quantized
  embeddings, tensors missing or of the wrong dtype or shape, FLOAT layers
  whose stored tensors are quantized, description entries for layers the
  model does not have, stored weights the description does not list, norm
  biases of the wrong size, C8 tensors, unsupported global settings, and,
  given a ``tensor_parallel_size``, sizes that do not split over the ranks.

The loader (``AscendModelSlimConfig``) builds the plan once when vLLM hands it
the model folder and looks layers up by prefix; ``vllm-modelslim inspect``
reports the same plan, so the two cannot disagree. Values of scales and
offsets are not part of the plan (they need the tensors; the loader checks
them after loading, ``inspect`` reads them itself).

The scheme classes are imported when a plan is built (not when this module is
imported), so the format layer stays importable on its own.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from vllm_modelslim.format.checkpoint import CheckpointIndex
from vllm_modelslim.format.checkpoint_checks import (
    norm_bias_shape_errors,
    unsupported_feature_errors,
    unsupported_layer_error,
)
from vllm_modelslim.format.description import FLOAT, QuantDescription
from vllm_modelslim.format.errors import (
    CheckpointTensorError,
    LayerNotDescribedError,
    ModelSlimFormatError,
    UnusedDescriptionEntryError,
)
from vllm_modelslim.format.kv_cache_c8 import C8, c8_attention_prefixes, c8_tensor_errors, kv_channels_of
from vllm_modelslim.format.layer_lookup import check_expert_entries, resolve_layer
from vllm_modelslim.format.packed_modules import packed_modules_for
from vllm_modelslim.format.shapes import projection_sizes
from vllm_modelslim.format.tensor_spec import ShapeSymbols, TensorRole, validate_layer_tensors

ROW_PARALLEL_NAMES = frozenset({"o_proj", "down_proj", "out_proj", "w2", "dense_4h_to_h"})
"""Checkpoint layer names that vLLM builds as ``RowParallelLinear`` (split along K, not N)."""

REPLICATED_NAMES = frozenset(
    {"gate", "shared_expert_gate", "fused_qkv_a_proj", "q_a_proj", "kv_a_proj_with_mqa"}
)
"""Checkpoint layer names that vLLM builds as ``ReplicatedLinear`` (whole on every rank: MoE routers,
DeepSeek's low-rank down-projections); the tensor-parallel checks skip them."""

EMBEDDING_NAMES = frozenset({"embed_tokens", "lm_head", "word_embeddings", "wte"})
"""Checkpoint layer names of embeddings and the LM head (vLLM builds no linear layer for them)."""

QUANTIZATION_SUFFIXES = (
    "weight_scale",
    "weight_offset",
    "weight_scale_second",
    "weight_offset_second",
    "deq_scale",
    "quant_bias",
    "input_scale",
    "input_offset",
    "scale_bias",
    "weight_packed",
    "weight_shape",
    "clip_ratio",
    "left_trans",
    "right_trans",
)
"""Tensor suffixes that only a quantized layer stores (a FLOAT layer storing one is a mismatch)."""

NUM_EXPERTS_KEYS = ("num_experts", "n_routed_experts", "num_local_experts")
"""``config.json`` keys that give the number of routed experts."""

_EXPERT = re.compile(r"^(?P<layer>.+\.experts)\.(?P<expert>\d+)\.(?P<proj>[^.]+)$")
_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)(?=\.)")
_EXPERT_INDEX = re.compile(r"\.experts\.(\d+)(?=\.)")
_DEFAULT_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
_MOE = "moe"
_LINEAR = "linear"


# --- the plan ------------------------------------------------------------------------------------


@dataclass
class PlannedLayer:
    """One vLLM layer as the plan sees it.

    Attributes:
        prefix: vLLM layer prefix in checkpoint naming (``model.layers.0.self_attn.qkv_proj``;
            ``model.layers.0.mlp.experts``; ``model.layers.0.self_attn.attn`` for a C8 cache).
        layer_type: ``"linear"``, ``"moe"``, ``"embedding"`` or ``"attention"``.
        quant_type: the description's quant type, ``"FLOAT"``, or ``"?"`` when it cannot be decided.
        shards: checkpoint prefixes of the fused parts (MoE: expert 0's gate, up and down).
        scheme_class: the registered scheme (None for FLOAT, embeddings and unknown types).
        scheme: the scheme instance built for the checks (a linear scheme, or a MoE scheme
            whose ``projection("w13")``/``projection("w2")`` are expert 0's), or None.
        row_parallel: vLLM splits the layer along K (``o_proj``, ``down_proj``).
        num_experts: routed experts (MoE only).
        projections: checkpoint names of an expert's gate, up and down projections (MoE only).
        out_features: full N of each shard (MoE: of the gate and up projections), None when unknown.
        in_features: full K (MoE: ``hidden_size``), None when unknown.
        errors: every problem found for this layer, in the order found.
    """

    prefix: str
    layer_type: str
    quant_type: str
    shards: tuple[str, ...]
    scheme_class: type | None = None
    scheme: Any = None
    row_parallel: bool = False
    num_experts: int = 0
    projections: tuple[str, str, str] | None = None
    out_features: tuple[int, ...] | None = None
    in_features: int | None = None
    errors: list[ModelSlimFormatError] = field(default_factory=list)

    @property
    def is_float(self) -> bool:
        """True when the layer stays unquantized."""
        return self.quant_type == FLOAT

    def raise_first_error(self) -> None:
        """Raise the first problem found for this layer, if any.

        Raises:
            ModelSlimFormatError: the layer's first problem (a subclass naming layer and file).
        """
        if self.errors:
            raise self.errors[0]


@dataclass
class LayerPlan:
    """The plan of a whole checkpoint (see :func:`plan_layers`).

    Attributes:
        config: the decoded ``config.json`` (its ``text_config`` for multimodal models).
        model_type: ``config.json``'s ``model_type``.
        description: the parsed description.
        checkpoint: the safetensors headers (None: only the description is checked).
        packed_modules: fused vLLM name → shard names used to group the layers.
        tensor_parallel_size: the rank count the partition checks used.
        layers: planned layers by prefix, in description order (attention layers last).
        errors: problems of the settings and of tensors outside the planned layers, found
            before the layers (unsupported settings, C8 tensors, norm biases).
        folder_errors: problems found after the layers: entries for layers the model does
            not have, stored weights the description does not list.
    """

    config: Mapping[str, Any]
    model_type: str | None
    description: QuantDescription
    checkpoint: CheckpointIndex | None
    packed_modules: dict[str, list[str]]
    tensor_parallel_size: int = 1
    layers: dict[str, PlannedLayer] = field(default_factory=dict)
    errors: list[ModelSlimFormatError] = field(default_factory=list)
    folder_errors: list[ModelSlimFormatError] = field(default_factory=list)

    # --- lookups ------------------------------------------------------------------------------

    def get(self, prefix: str) -> PlannedLayer | None:
        """The planned layer ``prefix`` (checkpoint naming), or None when the plan has no such layer."""
        return self.layers.get(prefix)

    def linear_layer(
        self,
        prefix: str,
        packed_modules: Mapping[str, Sequence[str]] | None = None,
        *,
        row_parallel: bool | None = None,
        required: bool = True,
    ) -> PlannedLayer | None:
        """The plan of the linear layer vLLM builds at ``prefix``, planned now if the plan lacks it.

        A layer the description-driven pass did not foresee (a fused name only
        the model class's ``packed_modules_mapping`` knows, or a layer without
        entries) is planned with the same checks and kept.

        Args:
            prefix: the layer prefix in checkpoint naming.
            packed_modules: the model class's ``packed_modules_mapping`` (merged under
                the plan's table) for layers the plan lacks.
            row_parallel: vLLM's answer, when known; a layer planned with the other
                role (its name is not in :data:`ROW_PARALLEL_NAMES`) is planned again.
            required: False for layers that may be absent from the description
                (embeddings, ``lm_head``): None is returned then.

        Returns:
            The planned layer (check ``errors``), or None when not ``required`` and undescribed.
        """
        planned = self.layers.get(prefix)
        if planned is not None and planned.layer_type in (_LINEAR, "embedding"):
            if row_parallel is None or planned.row_parallel == row_parallel or planned.layer_type != _LINEAR:
                return planned
        mapping = (
            packed_modules_for(self.model_type, packed_modules) if packed_modules else self.packed_modules
        )
        planner = _Planner(self)
        try:
            layer_quant = resolve_layer(self.description, prefix, mapping, required=required)
        except ModelSlimFormatError as error:
            planned = PlannedLayer(prefix, _LINEAR, "?", (prefix,), errors=[error])
        else:
            if layer_quant is None:
                return None
            planned = planner.linear(prefix, layer_quant.shard_prefixes, layer_quant.quant_type, row_parallel)
        self.layers[prefix] = planned
        return planned

    def moe_layer(
        self,
        prefix: str,
        projections: tuple[str, str, str] | None = None,
        num_experts: int | None = None,
    ) -> PlannedLayer:
        """The plan of the routed-experts layer vLLM builds at ``prefix``, planned now if the plan lacks it.

        Args:
            prefix: the experts layer in checkpoint naming (``model.layers.0.mlp.experts``).
            projections: vLLM's checkpoint names of gate, up and down (used when planning now
                or when they differ from the plan's).
            num_experts: vLLM's global expert count (likewise).
        """
        planned = self.layers.get(prefix)
        if planned is not None and planned.layer_type == _MOE:
            same_projections = projections is None or planned.projections == tuple(projections)
            if same_projections and (num_experts is None or planned.num_experts == num_experts):
                return planned
        planned = _Planner(self).moe(prefix, projections, num_experts, last_expert=0)
        self.layers[prefix] = planned
        return planned

    # --- problems ------------------------------------------------------------------------------

    def all_errors(self) -> list[ModelSlimFormatError]:
        """Every problem, in the order the loader reports them.

        Global settings and C8 tensors first, then the layers in description
        order, then the folder-wide header checks (norm biases, undescribed
        weights, entries for layers the model does not have).
        """
        layer_errors = [error for layer in self.layers.values() for error in layer.errors]
        return [*self.errors, *layer_errors, *self.folder_errors]

    def raise_first_error(self) -> None:
        """Raise the first of :meth:`all_errors`, if any.

        Raises:
            ModelSlimFormatError: the first problem (a subclass naming layer and file).
        """
        errors = self.all_errors()
        if errors:
            raise errors[0]

    def partition_errors(self, prefix: str, tensor_parallel_size: int) -> list[ModelSlimFormatError]:
        """Problems splitting planned layer ``prefix`` over ``tensor_parallel_size`` ranks.

        Returns an empty list for an unknown prefix or a single rank. See
        :func:`partition_errors` for the rules.
        """
        planned = self.layers.get(prefix)
        if planned is None:
            return []
        return partition_errors(planned, tensor_parallel_size, self.config, self.description)


def plan_layers(
    config: Mapping[str, Any],
    description: QuantDescription,
    checkpoint: CheckpointIndex | None,
    *,
    tensor_parallel_size: int = 1,
    packed_modules: Mapping[str, Sequence[str]] | None = None,
) -> LayerPlan:
    """Plan every layer of a ModelSlim checkpoint and collect every problem.

    Never raises for a bad checkpoint: each problem is recorded as the error
    the loader raises (on the layer, or in :attr:`LayerPlan.errors`).

    Args:
        config: the decoded ``config.json`` (or ``hf_config.to_dict()``); sizes, layer and
            expert counts and ``model_type`` come from it (missing keys skip those checks).
        description: the parsed description file.
        checkpoint: the folder's safetensors headers; None checks the description only.
        tensor_parallel_size: ranks the model will be split over; above 1 every layer is
            also checked by :func:`partition_errors`.
        packed_modules: the model class's ``packed_modules_mapping`` when known (the loader);
            merged under the per-``model_type`` table.

    Returns:
        The plan; ``plan.all_errors()`` is empty when the folder loads (values aside).

    Raises:
        ValueError: ``tensor_parallel_size`` is below 1.
    """
    if tensor_parallel_size < 1:
        raise ValueError(f"tensor_parallel_size must be at least 1, got {tensor_parallel_size}")
    model_type = config.get("model_type") if isinstance(config.get("model_type"), str) else None
    plan = LayerPlan(
        config=_text_config(config),
        model_type=model_type,
        description=description,
        checkpoint=checkpoint,
        packed_modules=packed_modules_for(model_type, packed_modules),
        tensor_parallel_size=tensor_parallel_size,
    )
    _Planner(plan).run()
    return plan


# --- tensor parallelism --------------------------------------------------------------------------


def partition_errors(
    planned: PlannedLayer,
    tensor_parallel_size: int,
    config: Mapping[str, Any] | None = None,
    description: QuantDescription | None = None,
) -> list[ModelSlimFormatError]:
    """Problems splitting one layer over ``tensor_parallel_size`` ranks (vLLM would only assert).

    Rules (full sizes from the plan; nothing is checked where they are unknown):

    * column-parallel linear layers: each shard's N divides by the rank count
      (``k_proj``/``v_proj`` with fewer KV heads than ranks are replicated, as vLLM does);
    * row-parallel linear layers: K divides by the rank count;
    * then every declared tensor's template resolves for one rank's sizes: pack
      factors divide the per-rank N or K, and the group size divides the per-rank
      K (a row-parallel layer's group count divides by the rank count);
    * routed experts: the intermediate size divides, the same template check
      for one rank's w13 and w2, and the MoE scheme's own restrictions;
    * layers vLLM replicates (:data:`REPLICATED_NAMES`) are not checked.

    Args:
        planned: a planned layer (``linear`` or ``moe``; others give no errors).
        tensor_parallel_size: the rank count.
        config: the model config (head counts for q/k/v); None: generic rules only.
        description: the description, whose file is named when no weight file is known.

    Returns:
        One error per problem, naming the layer and the file (empty for one rank).
    """
    tp = tensor_parallel_size
    if tp <= 1 or planned.errors or planned.layer_type not in (_LINEAR, _MOE):
        return []
    if planned.layer_type == _LINEAR and planned.prefix.rpartition(".")[2] in REPLICATED_NAMES:
        return []
    config = config or {}
    file = _layer_file(planned, description)
    where = f"with tensor parallelism {tp}: "

    def error(detail: str) -> CheckpointTensorError:
        return CheckpointTensorError(where + detail, file=file, layer=planned.prefix)

    if planned.layer_type == _MOE:
        return _moe_partition_errors(planned, tp, error)
    if planned.out_features is None or planned.in_features is None:
        return []
    k = planned.in_features
    if planned.row_parallel:
        if k % tp:
            return [
                error(f"this row-parallel layer's K = {k} input features do not split into {tp} equal parts")
            ]
        widths, k_rank = list(planned.out_features), k // tp
    else:
        widths = []
        for shard, n in zip(planned.shards, planned.out_features, strict=True):
            replicated = _replicated_kv_width(config, shard, tp)
            if replicated is not None:
                widths.append(replicated)
            elif n % tp:
                return [
                    error(
                        f"shard {shard!r} has N = {n} output features, "
                        f"which do not split into {tp} equal parts"
                    )
                ]
            else:
                widths.append(n // tp)
        k_rank = k
    return [error(message) for message in _template_errors(planned.scheme, widths, k_rank)]


def _moe_partition_errors(planned: PlannedLayer, tp: int, error: Any) -> list[ModelSlimFormatError]:
    errors: list[ModelSlimFormatError] = []
    scheme = planned.scheme
    if scheme is not None:
        try:
            scheme.check_layer(tp)
        except ModelSlimFormatError as exc:
            errors.append(exc)
    if planned.out_features is None or planned.in_features is None:
        return errors
    intermediate, hidden = planned.out_features[0], planned.in_features
    if intermediate % tp:
        errors.append(
            error(f"the experts' intermediate size {intermediate} does not split into {tp} equal parts")
        )
        return errors
    i_rank = intermediate // tp
    if scheme is not None:
        for name, widths, k in (("w13", [i_rank, i_rank], hidden), ("w2", [hidden], i_rank)):
            errors.extend(error(f"{name}: {m}") for m in _template_errors(scheme.projection(name), widths, k))
    return errors


def _template_errors(scheme: Any, widths: Sequence[int], k: int) -> list[str]:
    """Messages for declared tensor templates that do not resolve for one rank's sizes."""
    if scheme is None:
        return []
    group_size = scheme.group_size
    for width in widths:
        for spec in scheme.checkpoint_tensors():
            try:
                ShapeSymbols(width, k, group_size).shape(spec.shape)
            except ValueError as exc:
                return [f"one rank's part of {spec.suffix!r} (N = {width}, K = {k}): {exc}"]
    return []


def _replicated_kv_width(config: Mapping[str, Any], shard: str, tp: int) -> int | None:
    """One rank's N of a k/v projection whose KV heads are fewer than the ranks (vLLM replicates them)."""
    if shard.rpartition(".")[2] not in ("k_proj", "v_proj"):
        return None
    heads, kv_heads = _int(config, "num_attention_heads"), _int(config, "num_key_value_heads")
    hidden, head_dim = _int(config, "hidden_size"), _int(config, "head_dim")
    head_dim = head_dim or (hidden // heads if hidden and heads else None)
    if kv_heads is None or head_dim is None or kv_heads >= tp or tp % kv_heads:
        return None
    return head_dim


def _layer_file(planned: PlannedLayer, description: QuantDescription | None) -> str | None:
    scheme = planned.scheme
    context = getattr(scheme, "context", None)
    checkpoint = getattr(context, "checkpoint", None)
    if checkpoint is not None:
        for shard in planned.shards:
            for suffix in ("weight", "weight_packed"):
                path = checkpoint.file_of(f"{shard}.{suffix}")
                if path is not None:
                    return str(path)
    if description is not None:
        return description.source
    source = getattr(getattr(context, "description", None), "source", None)
    return source


# --- the planner -----------------------------------------------------------------------------------


def _int(config: Mapping[str, Any], key: str) -> int | None:
    value = config.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The language model's part of a (possibly multimodal) config."""
    text = config.get("text_config")
    if isinstance(text, Mapping) and "num_hidden_layers" in text and "num_hidden_layers" not in config:
        return {**text, "model_type": config.get("model_type")}
    return config


def _schemes() -> SimpleNamespace:
    """The scheme registry and contexts, imported on first use (the schemes import this layer)."""
    from vllm_modelslim.schemes import LayerContext, require_scheme_class
    from vllm_modelslim.schemes.moe import MoEContext

    return SimpleNamespace(LayerContext=LayerContext, MoEContext=MoEContext, require=require_scheme_class)


class _Planner:
    """Fills a :class:`LayerPlan`: one pass over the description and the headers."""

    def __init__(self, plan: LayerPlan):
        self.plan = plan
        self.description = plan.description
        self.checkpoint = plan.checkpoint
        self.config = plan.config
        self.fused_name = {
            shard: fused
            for fused, shards in plan.packed_modules.items()
            if fused != "experts"
            for shard in shards
            if "." not in shard
        }

    # --- the whole checkpoint ---------------------------------------------------------------

    def run(self) -> None:
        plan = self.plan
        plan.errors.extend(unsupported_feature_errors(self.description))
        self._kv_cache()
        unknown = self._unknown_layer_entries()
        linear: dict[str, None] = {}
        moe: dict[str, int] = {}  # experts layer -> highest expert id described
        for prefix, quant_type in self.description.weight_entries():
            if f"{prefix}.weight" in unknown:
                continue
            layer, expert = self.vllm_layer(prefix)
            if expert is not None:
                moe[layer] = max(expert, moe.get(layer, 0))
            elif prefix.rpartition(".")[2] in EMBEDDING_NAMES:
                plan.layers[prefix] = self.embedding(prefix, quant_type)
            elif self._is_linear(prefix, quant_type):
                linear[layer] = None
        for prefix in linear:
            plan.layers[prefix] = self.linear_from_description(prefix)
        for prefix, last_expert in moe.items():
            plan.layers[prefix] = self.moe(prefix, None, None, last_expert)
        for prefix, attention in self._attention_layers.items():
            plan.layers.setdefault(prefix, attention)
        self._norm_biases()
        if unknown:
            self._report_unknown_entries(unknown)
        self._undescribed_weights()
        if plan.tensor_parallel_size > 1:
            for planned in plan.layers.values():
                planned.errors.extend(
                    partition_errors(planned, plan.tensor_parallel_size, self.config, self.description)
                )

    def vllm_layer(self, prefix: str) -> tuple[str, int | None]:
        """The vLLM layer a checkpoint layer belongs to (fused shards, routed experts), and its expert id."""
        expert = _EXPERT.match(prefix)
        if expert:
            return expert["layer"], int(expert["expert"])
        head, _, name = prefix.rpartition(".")
        name = self.fused_name.get(name, name)
        return (f"{head}.{name}" if head else name), None

    def _is_linear(self, prefix: str, quant_type: str) -> bool:
        """A 2-D stored weight, or a quantized entry (whose missing tensors are reported as such)."""
        info = self.checkpoint.get(f"{prefix}.weight") if self.checkpoint is not None else None
        if info is None:
            return quant_type != FLOAT
        return len(info.shape) == 2

    # --- layers ------------------------------------------------------------------------------------

    def embedding(self, prefix: str, quant_type: str) -> PlannedLayer:
        planned = PlannedLayer(prefix, "embedding", quant_type, (prefix,))
        if quant_type != FLOAT:
            planned.errors.append(
                unsupported_layer_error(
                    prefix, quant_type, "a quantized embedding or lm_head", self.description
                )
            )
        return planned

    def linear_from_description(self, prefix: str) -> PlannedLayer:
        try:
            layer_quant = resolve_layer(self.description, prefix, self.plan.packed_modules)
        except ModelSlimFormatError as error:
            return PlannedLayer(prefix, _LINEAR, "?", (prefix,), errors=[error])
        assert layer_quant is not None
        return self.linear(prefix, layer_quant.shard_prefixes, layer_quant.quant_type, None)

    def linear(
        self, prefix: str, shards: tuple[str, ...], quant_type: str, row_parallel: bool | None
    ) -> PlannedLayer:
        """Plan one linear layer whose shards and quant type are known."""
        if row_parallel is None:
            row_parallel = prefix.rpartition(".")[2] in ROW_PARALLEL_NAMES
        planned = PlannedLayer(prefix, _LINEAR, quant_type, shards, row_parallel=row_parallel)
        if quant_type == FLOAT:
            planned.errors.extend(self._float_layer_errors(prefix, shards))
            self._set_sizes(planned, None)
            return planned
        schemes = _schemes()
        try:
            planned.scheme_class = schemes.require(
                quant_type, _LINEAR, layer=prefix, file=self.description.source
            )
            planned.scheme = planned.scheme_class(
                schemes.LayerContext(
                    prefix=prefix,
                    quant_type=quant_type,
                    shard_prefixes=shards,
                    description=self.description,
                    checkpoint=self.checkpoint,
                    row_parallel=row_parallel,
                )
            )
            self._set_sizes(planned, planned.scheme)
            if self.checkpoint is not None:
                validate_layer_tensors(
                    self.checkpoint,
                    layer=prefix,
                    quant_type=quant_type,
                    shard_prefixes=shards,
                    shard_out_features=list(planned.out_features) if planned.out_features else None,
                    in_features=planned.in_features,
                    tensors=planned.scheme.checkpoint_tensors(),
                    group_size=planned.scheme.group_size,
                )
                planned.scheme.check_stored_shapes(planned.in_features)
        except ModelSlimFormatError as error:
            planned.errors.append(error)
        return planned

    def _set_sizes(self, planned: PlannedLayer, scheme: Any) -> None:
        """``out_features``/``in_features`` from config.json, else from the stored weights."""
        sizes = [
            projection_sizes(self.config, shard) or self._stored_sizes(scheme, shard)
            for shard in planned.shards
        ]
        known = [s for s in sizes if s is not None]
        if known and len(known) == len(sizes) and all(k == known[0][1] for _, k in known):
            planned.out_features = tuple(n for n, _ in known)
            planned.in_features = known[0][1]
        elif known and all(k == known[0][1] for _, k in known):
            planned.in_features = known[0][1]

    def _stored_sizes(self, scheme: Any, shard: str) -> tuple[int, int] | None:
        """``(N, K)`` of a shard from its stored weight (and the scheme's weight declaration)."""
        if self.checkpoint is None:
            return None
        weight = None
        if scheme is not None:
            weight = next((s for s in scheme.checkpoint_tensors() if s.role is TensorRole.WEIGHT), None)
            if weight is None:
                return None
        info = self.checkpoint.get(f"{shard}.{weight.suffix if weight else 'weight'}")
        if info is None or len(info.shape) != 2:
            return None
        n, k = weight.unpacked_shape(info.shape) if weight else info.shape
        return n, k

    def _float_layer_errors(self, layer: str, shards: Iterable[str]) -> list[ModelSlimFormatError]:
        """A FLOAT layer whose stored tensors are quantized: the description and the weights disagree."""
        if self.checkpoint is None:
            return []
        errors: list[ModelSlimFormatError] = []
        for shard in shards:
            weight = self.checkpoint.get(f"{shard}.weight")
            found = [
                info for suffix in QUANTIZATION_SUFFIXES if (info := self.checkpoint.get(f"{shard}.{suffix}"))
            ]
            if weight is not None and not (weight.dtype is not None and weight.dtype.is_floating_point):
                found.insert(0, weight)
            if not found:
                continue
            shown = ", ".join(f"{info.name} ({info.dtype_name})" for info in found[:3])
            more = f" and {len(found) - 3} more" if len(found) > 3 else ""
            errors.append(
                CheckpointTensorError(
                    f"the description ({self.description.source}) marks {shard!r} FLOAT, but the "
                    f"checkpoint stores it quantized: {shown}{more}; the description does not belong "
                    "to these weights",
                    file=found[0].file,
                    layer=layer,
                )
            )
        return errors

    def moe(
        self,
        prefix: str,
        projections: tuple[str, str, str] | None,
        num_experts: int | None,
        last_expert: int,
    ) -> PlannedLayer:
        """Plan one routed-experts layer (expert 0 decides the quant type, every expert is checked)."""
        gate, up, down = projections or self._expert_projections(prefix)
        num_experts = num_experts or self._num_experts() or last_expert + 1
        shards = (f"{prefix}.0.{gate}", f"{prefix}.0.{up}", f"{prefix}.0.{down}")
        first = self.description.quant_type(f"{prefix}.0.{gate}.weight")
        planned = PlannedLayer(
            prefix, _MOE, first or "?", shards, num_experts=num_experts, projections=(gate, up, down)
        )
        intermediate, hidden = projection_sizes(self.config, shards[0]) or (None, None)
        if intermediate and hidden:
            planned.out_features, planned.in_features = (intermediate, intermediate), hidden
        if first is None:
            planned.errors.append(
                LayerNotDescribedError(
                    f"the description has no entry '{shards[0]}.weight' (expert 0 decides the type)",
                    file=self.description.source,
                    layer=prefix,
                )
            )
            return planned
        try:
            check_expert_entries(
                self.description,
                prefix,
                first,
                num_experts,
                lambda e: (f"{prefix}.{e}.{gate}", f"{prefix}.{e}.{up}", f"{prefix}.{e}.{down}"),
            )
        except ModelSlimFormatError as error:
            planned.errors.append(error)
            return planned
        if first == FLOAT:
            for expert in range(num_experts):
                expert_shards = (
                    f"{prefix}.{expert}.{gate}",
                    f"{prefix}.{expert}.{up}",
                    f"{prefix}.{expert}.{down}",
                )
                planned.errors.extend(self._float_layer_errors(prefix, expert_shards))
            return planned
        schemes = _schemes()
        try:
            planned.scheme_class = schemes.require(first, _MOE, layer=prefix, file=self.description.source)
            context = schemes.MoEContext(
                prefix=prefix,
                quant_type=first,
                checkpoint_prefix=prefix,
                projections=(gate, up, down),
                num_experts=num_experts,
                description=self.description,
                checkpoint=self.checkpoint,
            )
            planned.scheme = planned.scheme_class(context)
        except ModelSlimFormatError as error:
            planned.errors.append(error)
            return planned
        if self.checkpoint is None:
            return planned
        sizes = {"w13": ([intermediate, intermediate], hidden), "w2": ([hidden], intermediate)}
        for expert in range(num_experts):
            for projection, (out_features, in_features) in sizes.items():
                scheme = planned.scheme.projection(projection)
                try:
                    validate_layer_tensors(
                        self.checkpoint,
                        layer=f"{prefix} (expert {expert}, {projection})",
                        quant_type=first,
                        shard_prefixes=context.shard_prefixes(expert, projection),
                        shard_out_features=out_features if intermediate and hidden else None,
                        in_features=in_features if intermediate and hidden else None,
                        tensors=scheme.checkpoint_tensors(),
                        group_size=scheme.group_size,
                    )
                except ModelSlimFormatError as error:
                    planned.errors.append(error)
        return planned

    def _expert_projections(self, prefix: str) -> tuple[str, str, str]:
        """Gate, up and down names of the experts: the packed-module table, else the description."""
        table = [p.rpartition(".")[2] for p in self.plan.packed_modules.get("experts", [])]
        if len(table) == 3:
            gate, up, down = table
            if set(table) == {"w1", "w2", "w3"}:  # MiniMax lists w1, w2, w3: gate, down, up
                return "w1", "w3", "w2"
            return gate, up, down
        names = {
            match["proj"]
            for key in self.description.entries
            if (match := _EXPERT.match(key.removesuffix(".weight"))) and match["layer"] == prefix
        }
        if {"w1", "w2", "w3"} <= names:
            return "w1", "w3", "w2"
        return _DEFAULT_PROJECTIONS

    def _num_experts(self) -> int | None:
        return next((n for key in NUM_EXPERTS_KEYS if (n := _int(self.config, key))), None)

    # --- attention (C8) --------------------------------------------------------------------------

    def _kv_cache(self) -> None:
        self._attention_layers: dict[str, PlannedLayer] = {}
        try:
            prefixes = c8_attention_prefixes(self.description)
        except ModelSlimFormatError as error:
            self.plan.errors.append(error)
            return
        schemes = _schemes() if prefixes else None
        for prefix in prefixes:
            planned = PlannedLayer(f"{prefix}.attn", "attention", C8, (prefix,))
            try:
                planned.scheme_class = schemes.require(
                    C8, "attention", layer=prefix, file=self.description.source
                )
            except ModelSlimFormatError as error:
                planned.errors.append(error)
            self._attention_layers[planned.prefix] = planned
        kv_channels = kv_channels_of(SimpleNamespace(**self.config))
        self.plan.errors.extend(c8_tensor_errors(self.description, self.checkpoint, kv_channels))

    # --- folder-wide checks ------------------------------------------------------------------------

    def _norm_biases(self) -> None:
        if self.checkpoint is None:
            return
        sizes = {self.config.get("hidden_size"), self.config.get("head_dim")} - {None}
        self.plan.errors.extend(norm_bias_shape_errors(self.checkpoint, sizes))  # type: ignore[arg-type]

    def _unknown_layer_entries(self) -> list[str]:
        """Description entries of decoder layers or experts beyond the config's counts."""
        layers = _int(self.config, "num_hidden_layers")
        if layers is not None:
            layers += _int(self.config, "num_nextn_predict_layers") or 0
        experts = self._num_experts()
        unknown = []
        for key in self.description.entries:
            layer = _LAYER_INDEX.search(key)
            expert = _EXPERT_INDEX.search(key)
            if (layers is not None and layer and int(layer[1]) >= layers) or (
                experts is not None and expert and int(expert[1]) >= experts
            ):
                unknown.append(key)
        return unknown

    def _report_unknown_entries(self, unknown: Sequence[str]) -> None:
        layers = _int(self.config, "num_hidden_layers")
        experts = self._num_experts()
        counts = ", ".join(
            text
            for text in (
                f"{layers} decoder layers" if layers else "",
                f"{experts} experts per MoE layer" if experts else "",
            )
            if text
        )
        shown = ", ".join(unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
        self.plan.folder_errors.append(
            UnusedDescriptionEntryError(
                f"{len(unknown)} entr{'y names a layer' if len(unknown) == 1 else 'ies name layers'} "
                f"the model does not have (config.json: {counts}): {shown}; the description was "
                "probably written for another model",
                file=self.description.source,
            )
        )

    def _undescribed_weights(self) -> None:
        """Stored 2-D ``.weight`` tensors the description does not list, one problem per vLLM layer."""
        if self.checkpoint is None:
            return
        layers: dict[str, list[str]] = defaultdict(list)
        for info in self.checkpoint:
            if not info.name.endswith(".weight") or len(info.shape) != 2:
                continue
            if self.description.quant_type(info.name) is not None:
                continue
            layers[self.vllm_layer(info.name.removesuffix(".weight"))[0]].append(info.name)
        for layer, names in layers.items():
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            self.plan.folder_errors.append(
                LayerNotDescribedError(
                    f"stored weight(s) {shown} have no entry in the description, which was probably "
                    "written for another model",
                    file=self.description.source,
                    layer=layer,
                )
            )
