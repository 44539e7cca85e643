"""The layer plan: every layer of a ModelSlim checkpoint, its quant type, scheme and problems.

One function, :func:`plan_layers`, decides from ``config.json`` (a dict), the
parsed description and the safetensors headers, without vLLM and without
reading any weight:

* which vLLM layers the checkpoint has (unfused description entries are fused
  with the per-``model_type`` packed-module table, routed experts grouped into
  one ``experts`` layer, C8 attention layers taken from their KV-cache scales);
* each layer's quant type, scheme class (from the scheme registry), checkpoint
  shards and tensor-parallel role (column or row parallel); a fused layer whose
  shards have different types is *mixed* and holds one planned layer per shard;
* every problem the loader must stop at, each naming the layer and the file:
  undescribed shards, unknown quant types (of a layer or of one shard of a
  mixed fused layer), quantized embeddings, tensors missing or of the wrong
  dtype or shape, FLOAT layers whose stored tensors are quantized, description
  entries for layers the model does not have, stored weights the description
  does not list, norm biases of the wrong size, C8 tensors, unsupported
  global settings, and,
  given a ``tensor_parallel_size``, sizes that do not split over the ranks.

The loader (``AscendModelSlimConfig``) builds the plan once when vLLM hands it
the model folder and looks layers up by prefix; ``vllm-modelslim inspect``
reports the same plan, so the two cannot disagree. Values of scales and
offsets are not part of the plan (they need the tensors; the loader checks
them after loading, ``inspect`` reads them itself).

The scheme classes are imported when a plan is built (not when this module is
imported), so the format layer stays importable on its own. The parts:
:mod:`~vllm_modelslim.format.planned_layer` (one layer, name conventions),
:mod:`~vllm_modelslim.format.layer_planner` (the pass over description and
headers), :mod:`~vllm_modelslim.format.partition_checks` (tensor parallelism).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vllm_modelslim.format.checkpoint import CheckpointIndex
from vllm_modelslim.format.description import QuantDescription
from vllm_modelslim.format.errors import ModelSlimFormatError
from vllm_modelslim.format.layer_lookup import resolve_layer
from vllm_modelslim.format.layer_planner import LayerPlanner
from vllm_modelslim.format.packed_modules import packed_modules_for
from vllm_modelslim.format.partition_checks import partition_errors
from vllm_modelslim.format.planned_layer import (
    EMBEDDING_NAMES,
    LINEAR,
    MOE,
    REPLICATED_NAMES,
    ROW_PARALLEL_NAMES,
    PlannedLayer,
    text_config,
)

__all__ = [
    "EMBEDDING_NAMES",
    "REPLICATED_NAMES",
    "ROW_PARALLEL_NAMES",
    "LayerPlan",
    "PlannedLayer",
    "partition_errors",
    "plan_layers",
]


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
        if planned is not None and planned.layer_type in (LINEAR, "embedding"):
            if row_parallel is None or planned.row_parallel == row_parallel or planned.layer_type != LINEAR:
                return planned
        mapping = (
            packed_modules_for(self.model_type, packed_modules) if packed_modules else self.packed_modules
        )
        planner = LayerPlanner(self)
        try:
            layer_quant = resolve_layer(self.description, prefix, mapping, required=required)
        except ModelSlimFormatError as error:
            planned = PlannedLayer(prefix, LINEAR, "?", (prefix,), errors=[error])
        else:
            if layer_quant is None:
                return None
            planned = planner.resolved_linear(layer_quant, row_parallel)
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
        if planned is not None and planned.layer_type == MOE:
            same_projections = projections is None or planned.projections == tuple(projections)
            if same_projections and (num_experts is None or planned.num_experts == num_experts):
                return planned
        planned = LayerPlanner(self).moe(prefix, projections, num_experts, last_expert=0)
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
        config=text_config(config),
        model_type=model_type,
        description=description,
        checkpoint=checkpoint,
        packed_modules=packed_modules_for(model_type, packed_modules),
        tensor_parallel_size=tensor_parallel_size,
    )
    LayerPlanner(plan).run()
    return plan
