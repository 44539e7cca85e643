"""vLLM ``LinearMethodBase`` that delegates to a ModelSlim linear scheme."""

from __future__ import annotations

from collections.abc import Callable

import torch
from vllm.model_executor.layers.linear import (
    LinearMethodBase,
    register_weight_loader_v2_supported_method,
)

from vllm_modelslim.format.tensor_spec import validate_layer_tensors
from vllm_modelslim.kernels.base import QuantKernel
from vllm_modelslim.plugin.extra_bias import check_extra_bias_loaded, effective_bias, register_extra_bias
from vllm_modelslim.plugin.parameters import create_linear_parameters
from vllm_modelslim.plugin.row_max_reduce import row_max_reduce_for
from vllm_modelslim.schemes.base import LinearScheme

CHECKPOINT_WEIGHT_NAMES = ("weight", "weight_packed")
"""Layer parameters that hold a quantized weight as stored (ModelSlim int8, LLM-Compressor int32)."""

CHECKPOINT_SCALE_NAMES = ("weight_scale", "weight_offset", "weight_zero_point")
"""Layer parameters that hold the weight's scales and zero points (ModelSlim, LLM-Compressor)."""


def free_checkpoint_weights(layer: torch.nn.Module) -> None:
    """Empty the layer's stored weight (:data:`CHECKPOINT_WEIGHT_NAMES`) if every kernel copied it.

    Kernels with ``copies_weight`` (oneDNN's prepacked copy, int4pack, padded
    int8pack) keep their own layout; freeing the checkpoint's tensor leaves one
    weight copy per layer. Layers whose kernels read the stored tensor keep it.
    The scales and zero points (:data:`CHECKPOINT_SCALE_NAMES`) go too where
    every kernel also has ``copies_scales`` (int4pack keeps them in its own layout).
    """
    kernels = [m for m in layer.modules() if isinstance(m, QuantKernel) and m.holds_weight]
    if kernels and all(kernel.copies_weight for kernel in kernels):
        names = CHECKPOINT_WEIGHT_NAMES
        if all(kernel.copies_scales for kernel in kernels):
            names += CHECKPOINT_SCALE_NAMES
        for name in names:
            param = getattr(layer, name, None)
            if isinstance(param, torch.Tensor):
                param.data = param.data.new_empty(0)


def check_stored_tensors(
    scheme: LinearScheme, layer: torch.nn.Module, output_partition_sizes: list[int], input_size: int
) -> None:
    """Check the scheme's tensors in the safetensors headers before any parameter is made.

    Dtypes and presence always; shapes only without tensor parallelism, where
    vLLM's ``output_partition_sizes`` are the full shard sizes.

    Raises:
        CheckpointTensorError: a tensor is missing, or of the wrong dtype or shape (names layer and file).
    """
    context = scheme.context
    if context.checkpoint is None:
        return
    unsharded = getattr(layer, "tp_size", 1) == 1
    validate_layer_tensors(
        context.checkpoint,
        layer=context.prefix,
        quant_type=context.quant_type,
        shard_prefixes=context.shard_prefixes,
        shard_out_features=list(output_partition_sizes) if unsharded else None,
        in_features=input_size,
        tensors=scheme.checkpoint_tensors(),
        group_size=scheme.group_size,
    )
    scheme.check_stored_shapes(input_size)


@register_weight_loader_v2_supported_method
class ModelSlimLinearMethod(LinearMethodBase):
    """Linear method for a quantized layer of a ModelSlim checkpoint.

    ``create_weights`` first checks the layer's tensors in the checkpoint's
    safetensors headers (dtype, shape, presence; shapes only without tensor
    parallelism, where vLLM gives the full shard sizes), then lets the scheme
    register its parameters. Registered for vLLM's ``weight_loader_v2``, so
    vLLM's parameter classes place fused shards. A row-parallel layer split
    over tp > 1 ranks gets ``modelslim_row_max_reduce`` (dynamic schemes take
    their per-token scales over the full row, :mod:`~vllm_modelslim.plugin.row_max_reduce`).

    Args:
        scheme: the layer's scheme.
        after_loading: called once after all weights are loaded (norm-bias checks).
        extra_bias: vLLM's layer has no bias but the checkpoint stores one: register
            it and hand it to the scheme as the layer's bias (:mod:`~vllm_modelslim.plugin.extra_bias`).
    """

    def __init__(
        self,
        scheme: LinearScheme,
        after_loading: Callable[[], None] | None = None,
        extra_bias: bool = False,
    ):
        super().__init__()
        self.scheme = scheme
        self.after_loading = after_loading
        self.extra_bias = extra_bias

    def create_weights(
        self,
        layer: torch.nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        input_size: int,
        output_size: int,
        params_dtype: torch.dtype,
        **extra_weight_attrs,
    ) -> None:
        check_stored_tensors(self.scheme, layer, output_partition_sizes, input_size)
        create_linear_parameters(
            self.scheme,
            layer,
            input_size_per_partition,
            output_partition_sizes,
            params_dtype,
            extra_weight_attrs["weight_loader"],
        )
        if self.extra_bias:
            register_extra_bias(layer, output_partition_sizes, params_dtype)
        reduce = row_max_reduce_for(self.scheme.context.row_parallel, getattr(layer, "tp_size", 1))
        if reduce is not None:
            layer.modelslim_row_max_reduce = reduce

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        if self.after_loading is not None:
            self.after_loading()  # checks that run once all weights are in (norm biases)
        check_extra_bias_loaded(layer, self.scheme.context.prefix, self.scheme.context.description.source)
        self.scheme.check_values(layer)
        self.scheme.process_weights_after_loading(layer)
        free_checkpoint_weights(layer)

    def apply(
        self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.scheme.apply(layer, x, effective_bias(layer, bias))
