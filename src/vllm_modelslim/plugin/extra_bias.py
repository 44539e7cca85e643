"""Float linear biases that the checkpoint stores for a layer vLLM builds without a bias.

msmodelslim's old-pipeline ``m4`` anti-outlier smoothing (and its built-in
Qwen3 practice) writes a float ``<layer>.bias`` ``[o]`` on q/k/v/gate/up of
models whose vLLM layers have no bias (Qwen3). vLLM's ``AutoWeightsLoader``
drops unexpected ``.bias`` tensors without a word, so such a layer would run
without it. Here the plugin:

* registers :data:`EXTRA_BIAS_NAME` ``[N_rank]`` (zeros, the layer's params
  dtype, sliced by vLLM's own bias loader: column-parallel layers get their
  output partition, row-parallel layers the whole vector) on every linear
  layer whose vLLM module has ``bias=False`` but whose checkpoint shards store
  a ``.bias`` (:func:`register_extra_bias`);
* renames those checkpoint tensors to it (:func:`extra_bias_renames`, used by
  the quant config's checkpoint weight mapper), so the model's loader fills it
  shard by shard like a real bias;
* hands it to the linear method's math as the layer's bias
  (:func:`effective_bias`), following vLLM's ``RowParallelLinear``: a
  row-parallel layer adds it on tensor-parallel rank 0 only (once per
  all-reduced sum). The scheme decides what the bias means, exactly as for a
  layer with a vLLM bias: static ``W8A8`` ignores it (msmodelslim folded it
  into ``quant_bias``, spec ERRATA 2), the dynamic and weight-only schemes and
  FLOAT layers add it once;
* refuses a layer whose stored bias never reached the parameter (a model whose
  loader does not apply the quant config's mapper) in
  :func:`check_extra_bias_loaded`, naming the layer and the file.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from vllm.model_executor.layers.linear import (
    RowParallelLinear,
    UnquantizedLinearMethod,
    register_weight_loader_v2_supported_method,
)
from vllm.model_executor.utils import set_weight_attrs

from vllm_modelslim.format.checkpoint import CheckpointIndex
from vllm_modelslim.format.errors import CheckpointTensorError

EXTRA_BIAS_NAME = "modelslim_bias"
"""Parameter name of a stored float bias on a linear layer that vLLM builds without ``bias``."""


def stored_bias_shards(checkpoint: CheckpointIndex | None, shard_prefixes: Iterable[str]) -> list[str]:
    """The shard prefixes (checkpoint naming) whose ``<prefix>.bias`` the checkpoint stores."""
    if checkpoint is None:
        return []
    return [prefix for prefix in shard_prefixes if f"{prefix}.bias" in checkpoint]


def extra_bias_renames(vllm_prefix: str, shard_prefixes: Iterable[str]) -> dict[str, str]:
    """Checkpoint tensor name → loadable name of the stored biases of the vLLM layer ``vllm_prefix``.

    Names are those the model's weight loader sees (vLLM's module path with
    the unfused shard names): ``model.layers.0.self_attn.q_proj.bias`` →
    ``model.layers.0.self_attn.q_proj.modelslim_bias``; the model's
    packed-module mapping then routes it to ``qkv_proj.modelslim_bias``, shard ``q``.
    """
    head = vllm_prefix.rpartition(".")[0]
    renames = {}
    for shard in shard_prefixes:
        name = f"{head}.{shard.rpartition('.')[2]}" if head else shard.rpartition(".")[2]
        renames[f"{name}.bias"] = f"{name}.{EXTRA_BIAS_NAME}"
    return renames


def register_extra_bias(
    layer: torch.nn.Module, output_partition_sizes: list[int], params_dtype: torch.dtype
) -> None:
    """Register :data:`EXTRA_BIAS_NAME` ``[sum(output_partition_sizes)]`` (zeros) on ``layer``.

    Loaded by the layer's own (v1) weight loader, as vLLM loads a real bias:
    ``output_dim`` 0, so column-parallel layers take their slice and fused
    layers place each shard by its shard id; a shard without a stored bias keeps zeros.
    """
    bias = torch.nn.Parameter(
        torch.zeros(sum(output_partition_sizes), dtype=params_dtype), requires_grad=False
    )
    bias.modelslim_loaded = False

    def load(param: torch.nn.Parameter, loaded_weight: torch.Tensor, *shard_id) -> None:
        layer.weight_loader(param, loaded_weight, *shard_id)
        param.modelslim_loaded = True

    set_weight_attrs(bias, {"output_dim": 0, "weight_loader": load})
    layer.register_parameter(EXTRA_BIAS_NAME, bias)


def check_extra_bias_loaded(layer: torch.nn.Module, prefix: str, file: str | None) -> None:
    """After loading: the layer's stored bias reached :data:`EXTRA_BIAS_NAME`.

    Raises:
        CheckpointTensorError: the checkpoint stores a ``.bias`` for the layer,
            vLLM's layer has none and the model's loader did not hand it over
            (it would be dropped silently).
    """
    bias = getattr(layer, EXTRA_BIAS_NAME, None)
    if bias is not None and not bias.modelslim_loaded:
        raise CheckpointTensorError(
            "the checkpoint stores a float .bias for this layer, vLLM's layer has no bias and this "
            "model's weight loader did not pass the stored bias on; serving it without would be wrong",
            file=file,
            layer=prefix,
        )


def effective_bias(layer: torch.nn.Module, bias: torch.Tensor | None) -> torch.Tensor | None:
    """The bias the method's math gets: vLLM's ``bias``, else this rank's share of the extra bias.

    Row-parallel layers add the bias on tensor-parallel rank 0 only, as vLLM's
    ``RowParallelLinear`` does with its own bias (the ranks' outputs are summed).
    """
    if bias is not None:
        return bias
    extra = getattr(layer, EXTRA_BIAS_NAME, None)
    if extra is None or (isinstance(layer, RowParallelLinear) and layer.tp_rank > 0):
        return None
    return extra


@register_weight_loader_v2_supported_method
class BiasedFloatLinearMethod(UnquantizedLinearMethod):
    """vLLM's unquantized linear method plus the checkpoint's stored bias (FLOAT layers, rollbacks).

    ``y = x·Wᵀ + b`` ``[..., N]``, with ``b`` :data:`EXTRA_BIAS_NAME` (row-parallel: rank 0 only).

    Args:
        prefix: the layer (checkpoint naming), for messages.
        file: the file to name in errors (the description).
    """

    def __init__(self, prefix: str, file: str | None):
        super().__init__()
        self.prefix = prefix
        self.file = file

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
        super().create_weights(
            layer,
            input_size_per_partition,
            output_partition_sizes,
            input_size,
            output_size,
            params_dtype,
            **extra_weight_attrs,
        )
        register_extra_bias(layer, output_partition_sizes, params_dtype)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        """Raises CheckpointTensorError if the stored bias was not loaded (check_extra_bias_loaded)."""
        check_extra_bias_loaded(layer, self.prefix, self.file)
        super().process_weights_after_loading(layer)

    def apply(
        self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        return super().apply(layer, x, effective_bias(layer, bias))
