"""vLLM's KV-cache quant method for C8 attention layers, around :class:`C8KVCacheScheme`."""

from __future__ import annotations

import torch
from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size
from vllm.logger import init_logger
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig
from vllm.model_executor.layers.quantization.kv_cache import BaseKVCacheMethod

from vllm_modelslim.format.kv_cache_c8 import C8_TENSORS
from vllm_modelslim.plugin.int8_kv_attention import enable_int8_kv_cache
from vllm_modelslim.schemes.attention import C8KVCacheScheme

logger = init_logger(__name__)


class C8KVCacheMethod(BaseKVCacheMethod):
    """vLLM KV-cache quant method of a C8 attention layer.

    Registers ``k_cache_scale``/``k_cache_offset``/``v_cache_scale``/``v_cache_offset``
    (float32, one value until loaded with 1 or ``kv_channels``; the checkpoint's
    names are renamed by the config's ``get_cache_scale_mapper``), and after
    loading swaps the layer's attention implementation for the int8 cache.

    Args:
        quant_config: the owning quantization config.
        scheme: the layer's :class:`C8KVCacheScheme`.
    """

    def __init__(self, quant_config: QuantizationConfig, scheme: C8KVCacheScheme):
        super().__init__(quant_config)
        self.scheme = scheme

    def create_weights(self, layer: torch.nn.Module) -> None:
        """Register the four C8 parameters (after vLLM's q/k/v/prob scales, which stay 1.0).

        Raises:
            UnknownQuantTypeError: the engine was asked for another KV-cache dtype.
        """
        self.scheme.check_kv_cache_dtype(layer.kv_cache_dtype)
        super().create_weights(layer)
        for tensor in C8_TENSORS:
            fill = 1.0 if tensor.suffix.endswith("scale") else 0.0
            param = torch.nn.Parameter(torch.full((1,), fill, dtype=torch.float32), requires_grad=False)
            param.weight_loader = self.scheme.loader(tensor)  # type: ignore[attr-defined]
            layer.register_parameter(tensor.param, param)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        """Check the values, cut this rank's channels and enable the int8 cache on the layer.

        Raises:
            InvalidScaleError, CheckpointTensorError: see :meth:`C8KVCacheScheme.cache_params`.
        """
        super().process_weights_after_loading(layer)
        loaded = {tensor.param: getattr(layer, tensor.param).data for tensor in C8_TENSORS}
        params = self.scheme.cache_params(
            loaded,
            layer.num_kv_heads,
            layer.head_size,
            get_tensor_model_parallel_rank(),
            get_tensor_model_parallel_world_size(),
        )
        path = enable_int8_kv_cache(layer, params, int8_storage=self.scheme.context.int8_storage)
        logger.info_once("ModelSlim C8 KV cache: %s (%s)", path, type(layer.impl).__name__)
