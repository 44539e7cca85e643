"""The planner: one pass over a checkpoint's description and headers that fills a :class:`LayerPlan`."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from vllm_modelslim.format.checkpoint_checks import (
    norm_bias_shape_errors,
    unsupported_feature_errors,
    unsupported_layer_error,
)
from vllm_modelslim.format.description import FLOAT
from vllm_modelslim.format.errors import (
    CheckpointTensorError,
    LayerNotDescribedError,
    ModelSlimFormatError,
    UnusedDescriptionEntryError,
)
from vllm_modelslim.format.kv_cache_c8 import C8, c8_attention_prefixes, c8_tensor_errors, kv_channels_of
from vllm_modelslim.format.layer_lookup import (
    LayerQuant,
    check_expert_entries,
    mixed_quant_type,
    resolve_layer,
)
from vllm_modelslim.format.partition_checks import partition_errors
from vllm_modelslim.format.planned_layer import (
    EMBEDDING_NAMES,
    LINEAR,
    MOE,
    NUM_EXPERTS_KEYS,
    QUANTIZATION_SUFFIXES,
    ROW_PARALLEL_NAMES,
    PlannedLayer,
    config_int,
)
from vllm_modelslim.format.shapes import projection_sizes
from vllm_modelslim.format.tensor_spec import TensorRole, validate_layer_tensors

if TYPE_CHECKING:
    from vllm_modelslim.format.layer_plan import LayerPlan

_EXPERT = re.compile(r"^(?P<layer>.+\.experts)\.(?P<expert>\d+)\.(?P<proj>[^.]+)$")
_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)(?=\.)")
_EXPERT_INDEX = re.compile(r"\.experts\.(\d+)(?=\.)")
_DEFAULT_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


def _schemes() -> SimpleNamespace:
    """The scheme registry and contexts, imported on first use (the schemes import this layer)."""
    from vllm_modelslim.schemes import LayerContext, require_scheme_class
    from vllm_modelslim.schemes.moe import MoEContext

    return SimpleNamespace(LayerContext=LayerContext, MoEContext=MoEContext, require=require_scheme_class)


class LayerPlanner:
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
            return PlannedLayer(prefix, LINEAR, "?", (prefix,), errors=[error])
        assert layer_quant is not None
        return self.resolved_linear(layer_quant, None)

    def resolved_linear(self, layer_quant: LayerQuant, row_parallel: bool | None) -> PlannedLayer:
        """Plan the linear layer ``resolve_layer`` found: uniform, or mixed when its shards' types differ."""
        if layer_quant.is_mixed:
            return self.mixed_linear(
                layer_quant.prefix, layer_quant.shard_prefixes, layer_quant.shard_quant_types, row_parallel
            )
        return self.linear(
            layer_quant.prefix, layer_quant.shard_prefixes, layer_quant.quant_type, row_parallel
        )

    def mixed_linear(
        self, prefix: str, shards: tuple[str, ...], quant_types: tuple[str, ...], row_parallel: bool | None
    ) -> PlannedLayer:
        """Plan a fused layer whose shards have different quant types: one planned layer per shard.

        Each shard is planned as a layer of its own (its scheme, header checks and
        FLOAT checks, named by its checkpoint prefix); the fused layer collects their
        problems and sizes.
        """
        if row_parallel is None:
            row_parallel = prefix.rpartition(".")[2] in ROW_PARALLEL_NAMES
        parts = tuple(
            self.linear(shard, (shard,), quant_type, row_parallel)
            for shard, quant_type in zip(shards, quant_types, strict=True)
        )
        planned = PlannedLayer(
            prefix,
            LINEAR,
            mixed_quant_type(quant_types),
            shards,
            row_parallel=row_parallel,
            errors=[error for part in parts for error in part.errors],
            shard_layers=parts,
        )
        widths = [part.out_features[0] if part.out_features else None for part in parts]
        ks = {part.in_features for part in parts}
        if len(ks) == 1 and None not in ks:
            planned.in_features = ks.pop()
            if None not in widths:
                planned.out_features = tuple(widths)  # type: ignore[arg-type]
        return planned

    def linear(
        self, prefix: str, shards: tuple[str, ...], quant_type: str, row_parallel: bool | None
    ) -> PlannedLayer:
        """Plan one linear layer whose shards and quant type are known."""
        if row_parallel is None:
            row_parallel = prefix.rpartition(".")[2] in ROW_PARALLEL_NAMES
        planned = PlannedLayer(prefix, LINEAR, quant_type, shards, row_parallel=row_parallel)
        if quant_type == FLOAT:
            planned.errors.extend(self._float_layer_errors(prefix, shards))
            self._set_sizes(planned, None)
            return planned
        schemes = _schemes()
        try:
            planned.scheme_class = schemes.require(
                quant_type, LINEAR, layer=prefix, file=self.description.source
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

        def expert_shards(expert: int) -> tuple[str, str, str]:
            return (f"{prefix}.{expert}.{gate}", f"{prefix}.{expert}.{up}", f"{prefix}.{expert}.{down}")

        first = self.description.quant_type(f"{prefix}.0.{gate}.weight")
        planned = PlannedLayer(
            prefix, MOE, first or "?", expert_shards(0), num_experts=num_experts, projections=(gate, up, down)
        )
        intermediate, hidden = projection_sizes(self.config, planned.shards[0]) or (None, None)
        if intermediate and hidden:
            planned.out_features, planned.in_features = (intermediate, intermediate), hidden
        try:
            if first is None:
                raise LayerNotDescribedError(
                    f"the description has no entry '{planned.shards[0]}.weight' (expert 0 decides the type)",
                    file=self.description.source,
                    layer=prefix,
                )
            check_expert_entries(self.description, prefix, first, num_experts, expert_shards)
            if first == FLOAT:
                for expert in range(num_experts):
                    planned.errors.extend(self._float_layer_errors(prefix, expert_shards(expert)))
                return planned
            self._moe_scheme(planned)
        except ModelSlimFormatError as error:
            planned.errors.append(error)
            return planned
        if self.checkpoint is not None:
            planned.errors.extend(self._expert_header_errors(planned))
        return planned

    def _moe_scheme(self, planned: PlannedLayer) -> None:
        """Set the MoE scheme class and instance of ``planned`` (raises for an unknown quant type)."""
        schemes = _schemes()
        source = self.description.source
        planned.scheme_class = schemes.require(planned.quant_type, MOE, layer=planned.prefix, file=source)
        context = schemes.MoEContext(
            prefix=planned.prefix,
            quant_type=planned.quant_type,
            checkpoint_prefix=planned.prefix,
            projections=planned.projections,
            num_experts=planned.num_experts,
            description=self.description,
            checkpoint=self.checkpoint,
        )
        planned.scheme = planned.scheme_class(context)

    def _expert_header_errors(self, planned: PlannedLayer) -> list[ModelSlimFormatError]:
        """Every expert's w13/w2 tensors against its projection scheme's declarations."""
        assert self.checkpoint is not None
        known = planned.in_features is not None and planned.out_features is not None
        hidden, intermediate = planned.in_features, planned.out_features[0] if planned.out_features else None
        sizes = {"w13": ([intermediate, intermediate], hidden), "w2": ([hidden], intermediate)}
        context = planned.scheme.context
        errors: list[ModelSlimFormatError] = []
        for expert in range(planned.num_experts):
            for projection, (out_features, in_features) in sizes.items():
                scheme = planned.scheme.projection(projection)
                try:
                    validate_layer_tensors(
                        self.checkpoint,
                        layer=f"{planned.prefix} (expert {expert}, {projection})",
                        quant_type=planned.quant_type,
                        shard_prefixes=context.shard_prefixes(expert, projection),
                        shard_out_features=out_features if known else None,
                        in_features=in_features if known else None,
                        tensors=scheme.checkpoint_tensors(),
                        group_size=scheme.group_size,
                    )
                except ModelSlimFormatError as error:
                    errors.append(error)
        return errors

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
        return next((n for key in NUM_EXPERTS_KEYS if (n := config_int(self.config, key))), None)

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
        layers = config_int(self.config, "num_hidden_layers")
        if layers is not None:
            layers += config_int(self.config, "num_nextn_predict_layers") or 0
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
        layers = config_int(self.config, "num_hidden_layers")
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

    def _is_mtp_tensor(self, name: str) -> bool:
        """A tensor of an MTP layer (``num_hidden_layers`` … ``+ num_nextn_predict_layers − 1``).

        vLLM's main model does not build these layers (its MTP drafter does), so
        weights stored for them without description entries are float and unused.
        """
        layers = config_int(self.config, "num_hidden_layers")
        extra = config_int(self.config, "num_nextn_predict_layers") or 0
        match = _LAYER_INDEX.search(name)
        return layers is not None and match is not None and layers <= int(match[1]) < layers + extra

    def _undescribed_weights(self) -> None:
        """Stored 2-D ``.weight`` tensors the description does not list, one problem per vLLM layer."""
        if self.checkpoint is None:
            return
        layers: dict[str, list[str]] = defaultdict(list)
        for info in self.checkpoint:
            if not info.name.endswith(".weight") or len(info.shape) != 2:
                continue
            if self.description.quant_type(info.name) is not None or self._is_mtp_tensor(info.name):
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
