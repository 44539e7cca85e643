"""Tensor-parallel checks of a planned layer: sizes that must split evenly over the ranks.

vLLM asserts divisibility in its layer constructors with bare messages; the
plan reports the same conditions first, naming the layer and the file:
column-parallel N and row-parallel K per rank, pack factors and K-groups of
each rank's share, the experts' intermediate size and the MoE scheme's own
restrictions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vllm_modelslim.format.description import QuantDescription
from vllm_modelslim.format.errors import (
    CheckpointTensorError,
    ModelSlimFormatError,
)
from vllm_modelslim.format.planned_layer import (
    LINEAR,
    MOE,
    REPLICATED_NAMES,
    PlannedLayer,
    config_int,
)
from vllm_modelslim.format.tensor_spec import ShapeSymbols


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
    * row-parallel linear layers: K divides by the rank count, and so does a
      per-group layer's K-group count (each rank holds whole groups); a scheme
      that cannot run on K-slices (FlatQuant) says why;
    * then every declared tensor's template resolves for one rank's sizes: pack
      factors divide the per-rank N or K, and the group size divides the per-rank
      K (a row-parallel layer's group count divides by the rank count);
    * routed experts: the intermediate size divides, the same template check
      for one rank's w13 and w2, and the MoE scheme's own restrictions;
    * layers vLLM replicates (:data:`REPLICATED_NAMES`) are not checked;
    * a mixed fused layer is checked shard by shard, each with its own scheme.

    Args:
        planned: a planned layer (``linear`` or ``moe``; others give no errors).
        tensor_parallel_size: the rank count.
        config: the model config (head counts for q/k/v); None: generic rules only.
        description: the description, whose file is named when no weight file is known.

    Returns:
        One error per problem, naming the layer and the file (empty for one rank).
    """
    tp = tensor_parallel_size
    if tp <= 1 or planned.errors or planned.layer_type not in (LINEAR, MOE):
        return []
    if planned.shard_layers:  # a mixed fused layer: each shard splits by its own scheme's rules
        return [e for part in planned.shard_layers for e in partition_errors(part, tp, config, description)]
    if planned.layer_type == LINEAR and planned.prefix.rpartition(".")[2] in REPLICATED_NAMES:
        return []
    config = config or {}
    file = _layer_file(planned, description)
    where = f"with tensor parallelism {tp}: "

    def error(detail: str) -> CheckpointTensorError:
        return CheckpointTensorError(where + detail, file=file, layer=planned.prefix)

    if planned.layer_type == MOE:
        return _moe_partition_errors(planned, tp, error)
    if planned.out_features is None or planned.in_features is None:
        return []
    k = planned.in_features
    if planned.row_parallel:
        if k % tp:
            return [
                error(f"this row-parallel layer's K = {k} input features do not split into {tp} equal parts")
            ]
        if reason := getattr(planned.scheme, "row_parallel_split_error", None):
            return [error(reason)]
        if message := _group_split_error(planned.scheme, k, tp):
            return [error(message)]
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
    if scheme is not None and (message := _group_split_error(scheme.projection("w2"), intermediate, tp)):
        errors.append(error(f"w2: {message}"))
        return errors
    if scheme is not None:
        for name, widths, k in (("w13", [i_rank, i_rank], hidden), ("w2", [hidden], i_rank)):
            errors.extend(error(f"{name}: {m}") for m in _template_errors(scheme.projection(name), widths, k))
    return errors


def _group_split_error(scheme: Any, k: int, tp: int) -> str | None:
    """Message for a row-parallel per-group layer whose K-groups do not split into whole groups per rank."""
    group_size = getattr(scheme, "group_size", 0) if scheme is not None else 0
    if not group_size or k % group_size or (k // group_size) % tp == 0:
        return None  # per-channel, or a K the declared templates report on
    return (
        f"its {k // group_size} K-groups of {group_size} input features do not split into {tp} "
        "equal parts (each rank must hold whole groups)"
    )


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
    heads, kv_heads = config_int(config, "num_attention_heads"), config_int(config, "num_key_value_heads")
    hidden, head_dim = config_int(config, "hidden_size"), config_int(config, "head_dim")
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
