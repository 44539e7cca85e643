"""vLLM parameters built from a scheme's tensor declarations (:class:`CheckpointTensor`).

The schemes declare what each shard stores (role, shape template, dtype);
this module is where those declarations become vLLM parameter objects, so
vLLM's own loaders place fused q/k/v and gate/up shards and slice them for
tensor parallelism. Linear layers use vLLM's parameter classes; routed
experts use plain parameters with the attributes vLLM's expert loader reads.
A fused layer whose shards have different quant types keeps one set of
parameters per shard behind routing parameters under the fused names
(:func:`register_shard_routes`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from vllm.model_executor.layers.fused_moe import FusedMoeWeightScaleSupported
from vllm.model_executor.parameter import (
    BasevLLMParameter,
    ChannelQuantScaleParameter,
    GroupQuantScaleParameter,
    ModelWeightParameter,
    PackedvLLMParameter,
    PerTensorScaleParameter,
)
from vllm.model_executor.utils import set_weight_attrs

from vllm_modelslim.format.errors import CheckpointTensorError
from vllm_modelslim.format.tensor_spec import CheckpointTensor, ShapeSymbols, TensorRole
from vllm_modelslim.schemes.base import LinearScheme


def decoding_loader(loader: Callable, decode: Callable[[torch.Tensor], torch.Tensor] | None) -> Callable:
    """``loader`` that first applies ``decode`` to the loaded tensor (e.g. int64 fp32 bits → fp32).

    ``decode=None`` returns ``loader`` itself.
    """
    if decode is None:
        return loader

    def load(param: torch.nn.Parameter, loaded_weight: torch.Tensor, *args, **kwargs):
        return loader(param, decode(loaded_weight), *args, **kwargs)

    return load


class ShardStackParameter(BasevLLMParameter):
    """One tensor per shard of a fused layer, stacked on a new leading dim ``[S, ...]``.

    vLLM's ``PerTensorScaleParameter`` keeps one *scalar* per shard; FlatQuant
    stores whole matrices (``left_trans``, ``right_trans``) per q/k/v or
    gate/up shard, and the shards need not agree (msmodelslim writes its own
    clip ratio for q_proj). Shard ids ``q/k/v`` or ``0, 1, ...`` select the slot;
    an unfused layer uses slot 0.
    """

    def _load(self, loaded_weight: torch.Tensor, shard_id: str | int | None) -> None:
        slot = self.data[0 if shard_id is None else self._shard_id_as_int(shard_id)]
        if slot.shape != loaded_weight.shape:
            raise ValueError(
                f"per-shard tensor of shape {tuple(loaded_weight.shape)} for a {tuple(slot.shape)} slot"
            )
        slot.copy_(loaded_weight)

    def load_merged_column_weight(self, loaded_weight: torch.Tensor, **kwargs) -> None:
        self._load(loaded_weight, kwargs.get("shard_id"))

    def load_qkv_weight(self, loaded_weight: torch.Tensor, **kwargs) -> None:
        self._load(loaded_weight, kwargs.get("shard_id"))

    def load_column_parallel_weight(self, loaded_weight: torch.Tensor) -> None:
        self._load(loaded_weight, None)

    def load_row_parallel_weight(self, loaded_weight: torch.Tensor) -> None:
        self._load(loaded_weight, None)


def create_linear_parameters(
    scheme: LinearScheme,
    layer: torch.nn.Module,
    input_size_per_partition: int,
    output_partition_sizes: list[int],
    params_dtype: torch.dtype,
    weight_loader: Callable,
) -> None:
    """Register one vLLM parameter per tensor ``scheme`` declares, on a linear ``layer``.

    ``WEIGHT``, ``PER_CHANNEL`` and ``PER_GROUP`` tensors become
    ``[sum(N_i), ...]`` parameters that vLLM fills shard by shard (packed
    weights through ``PackedvLLMParameter``); ``PER_SHARD`` scalars become a
    ``PerTensorScaleParameter`` with one slot per shard, ``PER_SHARD_TENSOR``
    tensors a :class:`ShardStackParameter` with one entry per shard. Sets
    ``layer.logical_widths`` (this rank's shard widths) and
    ``layer.modelslim_params_dtype``.

    Raises:
        CheckpointTensorError: a shard's size does not divide by a pack
            factor or group, or a per-shard tensor's shape is unknown.
    """
    layer.logical_widths = list(output_partition_sizes)
    layer.modelslim_params_dtype = params_dtype
    scheme.check_partition(output_partition_sizes, input_size_per_partition)
    symbols = ShapeSymbols(sum(output_partition_sizes), input_size_per_partition, scheme.group_size)
    num_shards = len(output_partition_sizes)
    for spec in scheme.checkpoint_tensors():
        loader = decoding_loader(weight_loader, spec.decode)
        param = _linear_parameter(scheme, spec, symbols, num_shards, loader)
        if param is not None:
            layer.register_parameter(spec.suffix, param)


def _linear_parameter(
    scheme: LinearScheme, spec: CheckpointTensor, symbols: ShapeSymbols, num_shards: int, loader: Callable
) -> BasevLLMParameter | None:
    if spec.role is TensorRole.PER_SHARD:
        return PerTensorScaleParameter(
            data=torch.full((num_shards,), spec.fill, dtype=spec.param_dtype), weight_loader=loader
        )
    if spec.role is TensorRole.PER_SHARD_TENSOR:
        shape = scheme.per_shard_tensor_shape(spec)
        if shape is None:
            return None  # absent optional per-shard tensor (e.g. o_proj's right_trans)
        data = torch.full((num_shards, *shape), spec.fill, dtype=spec.param_dtype)
        return ShardStackParameter(data=data, weight_loader=loader)
    data = torch.full(symbols.shape(spec.shape), spec.fill, dtype=spec.param_dtype)  # type: ignore[arg-type]
    if spec.role is TensorRole.WEIGHT and spec.packed_dim is not None:
        return PackedvLLMParameter(
            data=data,
            input_dim=1,
            output_dim=0,
            packed_dim=spec.packed_dim,
            packed_factor=spec.packed_factor,
            weight_loader=loader,
        )
    if spec.role is TensorRole.WEIGHT:
        return ModelWeightParameter(data=data, input_dim=1, output_dim=0, weight_loader=loader)
    if spec.role is TensorRole.PER_GROUP:
        return GroupQuantScaleParameter(data=data, input_dim=1, output_dim=0, weight_loader=loader)
    return ChannelQuantScaleParameter(data=data, output_dim=0, weight_loader=loader)


def expert_parameter(
    spec: CheckpointTensor,
    shape: tuple[int, ...],
    num_experts: int,
    expert_loader: Callable,
    per_shard_loader: Callable,
    num_shards: int,
) -> torch.nn.Parameter:
    """A stacked ``[E_local, ...]`` parameter of routed experts for one declared tensor.

    Args:
        spec: the projection scheme's declaration.
        shape: one expert's shape (``[N, K]``-style for weights and channel or
            group scales; one shard's shape for ``PER_SHARD_TENSOR``; ``()``
            for ``PER_SHARD`` scalars).
        num_experts: local experts on this rank.
        expert_loader: vLLM's expert weight loader (weights, channel/group scales).
        per_shard_loader: loader keeping one value per (expert, shard), for
            ``PER_SHARD`` / ``PER_SHARD_TENSOR`` tensors.
        num_shards: shards of the projection (2 for w13, 1 for w2).
    """
    if spec.role in (TensorRole.PER_SHARD, TensorRole.PER_SHARD_TENSOR):
        data = torch.full((num_experts, num_shards, *shape), spec.fill, dtype=spec.param_dtype)
        param = torch.nn.Parameter(data, requires_grad=False)
        set_weight_attrs(param, {"weight_loader": decoding_loader(per_shard_loader, spec.decode)})
        return param
    data = torch.full((num_experts, *shape), spec.fill, dtype=spec.param_dtype)
    param = torch.nn.Parameter(data, requires_grad=False)
    group = spec.role is TensorRole.PER_GROUP
    set_weight_attrs(
        param,
        {
            "weight_loader": decoding_loader(expert_loader, spec.decode),
            "quant_method": (
                FusedMoeWeightScaleSupported.GROUP if group else FusedMoeWeightScaleSupported.CHANNEL
            ).value,
            "is_transposed": False,
        },
    )
    return param


# --- mixed fused layers: one set of parameters per shard ----------------------------------------

_QKV_SHARDS = {"q": 0, "k": 1, "v": 2}


def shard_index(shard_id: str | int | None, num_shards: int, *, layer: str, file: str | None) -> int:
    """Position of vLLM's ``loaded_shard_id`` (``"q"``/``"k"``/``"v"`` or ``0, 1, ...``) among the shards.

    Raises:
        CheckpointTensorError: no shard id (the checkpoint stores the layer fused,
            which a mixed layer cannot be) or one beyond the layer's shards.
    """
    index = _QKV_SHARDS.get(shard_id, shard_id) if isinstance(shard_id, str) else shard_id
    if not isinstance(index, int) or not 0 <= index < num_shards:
        raise CheckpointTensorError(
            f"vLLM loads a tensor with shard id {shard_id!r} into a layer whose {num_shards} fused "
            "shards have different quant types; each shard must be stored under its own name",
            file=file,
            layer=layer,
        )
    return index


def shard_part_loader(width: int, num_kv_head_replicas: int = 1) -> Callable:
    """Weight loader of one shard's own parameters behind a mixed fused layer.

    The parameter holds only this rank's part of one shard (``width`` output
    rows, unpacked), so the shard is placed at offset 0; vLLM's parameter
    classes still pick this rank's rows of the stored tensor (q/k/v through
    ``load_qkv_weight``, which replicates KV heads as vLLM does, other fused
    layers through ``load_merged_column_weight``). Per-shard scalars and
    stacked per-shard tensors go to their only slot.
    """

    def load(
        param: BasevLLMParameter, loaded_weight: torch.Tensor, shard_id: str | int | None = None
    ) -> None:
        if getattr(param, "output_dim", None) is None:  # per-shard scalar or tensor, or a plain parameter
            param.load_merged_column_weight(loaded_weight=loaded_weight, shard_id=0)
        elif isinstance(shard_id, str):
            param.load_qkv_weight(
                loaded_weight=loaded_weight,
                num_heads=num_kv_head_replicas,
                shard_id=shard_id,
                shard_offset=0,
                shard_size=width,
            )
        else:
            param.load_merged_column_weight(
                loaded_weight=loaded_weight, shard_id=0, shard_offset=0, shard_size=width
            )

    return load


def register_shard_routes(
    layer: torch.nn.Module, parts: Sequence[torch.nn.Module], *, prefix: str, file: str | None
) -> None:
    """Register on ``layer`` one empty routing parameter per tensor name any shard part declares.

    vLLM's model loaders look parameters up by the fused name
    (``qkv_proj.weight_scale``) and call ``weight_loader(param, tensor, shard_id)``;
    the routing parameter hands the tensor to the parameter of the same name on
    the shard's part (``parts[i]``, a module holding that shard's parameters at
    its own size and dtype), through that parameter's own loader.

    Raises:
        CheckpointTensorError: (when loading) a tensor for a shard whose quant type
            does not store it, or a tensor without a shard id.
    """
    names = dict.fromkeys(name for part in parts for name, _ in part.named_parameters(recurse=False))
    for name in names:

        def route(param: torch.nn.Parameter, loaded_weight: torch.Tensor, shard_id=None, _name=name) -> None:
            index = shard_index(shard_id, len(parts), layer=prefix, file=file)
            target = getattr(parts[index], _name, None)
            if not isinstance(target, torch.nn.Parameter):
                raise CheckpointTensorError(
                    f"the checkpoint stores {_name!r} for shard {shard_id!r}, "
                    "whose quant type has no such tensor",
                    file=file,
                    layer=prefix,
                )
            target.weight_loader(target, loaded_weight, shard_id)

        router = BasevLLMParameter(data=torch.empty(0), weight_loader=route)
        layer.register_parameter(name, router)
