"""vLLM linear method for a fused layer whose shards have different quant types (mixed precision).

msmodelslim rolls sensitive layers back to FLOAT one checkpoint layer at a
time, so vLLM's fused ``qkv_proj``/``gate_up_proj``/``fused_qkv_a_proj`` can
hold a FLOAT ``q_proj`` next to a W8A8_MIX ``k_proj``/``v_proj`` (msmodelslim's
own Qwen3 practice does this), or shards of two quantized types. vllm-ascend
refuses such a layer (its issue #2588); here each shard runs on its own:

* ``create_weights`` builds one *part* per shard, a plain module holding that
  shard's parameters at this rank's shard size: vLLM's unquantized weight
  (``UnquantizedLinearMethod``) for a FLOAT shard, the scheme's declared
  tensors (:func:`~vllm_modelslim.plugin.parameters.create_linear_parameters`)
  for a quantized one, whose headers are checked first as in
  :class:`~vllm_modelslim.plugin.linear_method.ModelSlimLinearMethod`;
* the fused layer gets one empty routing parameter per tensor name, whose
  loader hands each stored tensor to its shard's part by vLLM's shard id
  (:func:`~vllm_modelslim.plugin.parameters.register_shard_routes`); the parts
  stay unregistered while loading, so vLLM's loaded-weights check sees only
  the fused names;
* after loading, each part checks its values and builds its kernel, and the
  parts become the layer's ``modelslim_shards`` submodules;
* ``apply`` runs every shard on the same input (each quantizes it by its own
  rule), with its slice of the layer's bias, and concatenates the outputs
  along N, in shard order: ``y = [x·W_0ᵀ + b_0 | x·W_1ᵀ + b_1 | ...]``.

Layers whose shards agree keep :class:`ModelSlimLinearMethod` (one scheme,
one kernel); this method is chosen only for mixed layers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from vllm.model_executor.layers.linear import (
    LinearMethodBase,
    UnquantizedLinearMethod,
    register_weight_loader_v2_supported_method,
)
from vllm.model_executor.parameter import BasevLLMParameter

from vllm_modelslim.format.errors import CheckpointTensorError
from vllm_modelslim.plugin.extra_bias import check_extra_bias_loaded, effective_bias, register_extra_bias
from vllm_modelslim.plugin.linear_method import check_stored_tensors, free_checkpoint_weights
from vllm_modelslim.plugin.parameters import (
    create_linear_parameters,
    register_shard_routes,
    shard_part_loader,
)
from vllm_modelslim.schemes.base import LinearScheme


@register_weight_loader_v2_supported_method
class ModelSlimMixedLinearMethod(LinearMethodBase):
    """Linear method of a fused layer whose shards have different quant types.

    Args:
        prefix: the fused layer (checkpoint naming), for messages.
        schemes: one entry per shard in vLLM's shard order: the shard's linear
            scheme, or None for a FLOAT shard.
        file: the file to name when a problem concerns the layer as a whole
            (the description).
        after_loading: called once after all weights are loaded (norm-bias checks).
        extra_bias: vLLM's layer has no bias but the checkpoint stores one for a
            shard: register it on the fused layer and split it over the shards like
            a vLLM bias (:mod:`~vllm_modelslim.plugin.extra_bias`).
    """

    def __init__(
        self,
        prefix: str,
        schemes: Sequence[LinearScheme | None],
        file: str | None,
        after_loading: Callable[[], None] | None = None,
        extra_bias: bool = False,
    ):
        super().__init__()
        self.prefix = prefix
        self.schemes = tuple(schemes)
        self.file = file
        self.after_loading = after_loading
        self.extra_bias = extra_bias
        self.float_methods: dict[int, UnquantizedLinearMethod] = {}

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
        """Build one part per shard and the routing parameters (see the module docstring).

        Raises:
            CheckpointTensorError: vLLM's layer has another shard count than the
                description, or a quantized shard's stored tensors do not fit its scheme.
        """
        if len(output_partition_sizes) != len(self.schemes):
            raise CheckpointTensorError(
                f"vLLM builds this layer from {len(output_partition_sizes)} shard(s), but the "
                f"description gives {len(self.schemes)} shards of different quant types",
                file=self.file,
                layer=self.prefix,
            )
        tp_rank, tp_size = getattr(layer, "tp_rank", 0), getattr(layer, "tp_size", 1)
        replicas = getattr(layer, "num_kv_head_replicas", 1)
        parts = []
        for index, (scheme, width) in enumerate(zip(self.schemes, output_partition_sizes, strict=True)):
            part = torch.nn.Module()
            part.tp_rank, part.tp_size = tp_rank, tp_size
            loader = shard_part_loader(width, replicas)
            if scheme is None:
                method = UnquantizedLinearMethod()
                method.create_weights(
                    part,
                    input_size_per_partition,
                    [width],
                    input_size,
                    width,
                    params_dtype,
                    weight_loader=loader,
                )
                self.float_methods[index] = method
            else:
                check_stored_tensors(scheme, layer, [width], input_size)
                create_linear_parameters(
                    scheme, part, input_size_per_partition, [width], params_dtype, loader
                )
            for param in part.parameters():
                if isinstance(param, BasevLLMParameter):  # vLLM reconciles only the layer's own parameters
                    param.tp_rank, param.tp_size = tp_rank, tp_size
            parts.append(part)
        layer.logical_widths = list(output_partition_sizes)
        layer.modelslim_params_dtype = params_dtype
        layer.modelslim_shard_parts = parts  # a plain list: not the layer's parameters while loading
        register_shard_routes(layer, parts, prefix=self.prefix, file=self.file)
        if self.extra_bias:
            register_extra_bias(layer, output_partition_sizes, params_dtype)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        """Check each shard's values, build its kernel, and make the parts the layer's submodules.

        Raises:
            InvalidScaleError: a quantized shard's scale or offset breaks its value rule.
        """
        if self.after_loading is not None:
            self.after_loading()
        check_extra_bias_loaded(layer, self.prefix, self.file)
        parts = layer.modelslim_shard_parts
        for index, (scheme, part) in enumerate(zip(self.schemes, parts, strict=True)):
            if scheme is None:
                self.float_methods[index].process_weights_after_loading(part)
            else:
                scheme.check_values(part)
                scheme.process_weights_after_loading(part)
                free_checkpoint_weights(part)
        layer.modelslim_shards = torch.nn.ModuleList(parts)
        del layer.modelslim_shard_parts

    def apply(
        self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[..., K]`` → ``[..., sum(N_i)]``: each shard's own forward on ``x``, concatenated along N."""
        bias = effective_bias(layer, bias)
        biases = [None] * len(self.schemes) if bias is None else torch.split(bias, layer.logical_widths)
        outputs = []
        for index, (scheme, part) in enumerate(zip(self.schemes, layer.modelslim_shards, strict=True)):
            if scheme is None:
                outputs.append(self.float_methods[index].apply(part, x, biases[index]))
            else:
                outputs.append(scheme.apply(part, x, biases[index]))
        return torch.cat(outputs, dim=-1)
