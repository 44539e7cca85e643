"""Checkpoint-wide checks that need no model: unsupported features, layer kinds and norm-bias shapes.

Shared by the vLLM loader (``plugin/quant_config.py``) and ``vllm-modelslim
inspect``, so both report the same problems with the same messages.
"""

from __future__ import annotations

from vllm_modelslim.format.checkpoint import CheckpointIndex
from vllm_modelslim.format.description import QuantDescription
from vllm_modelslim.format.errors import CheckpointTensorError, UnknownQuantTypeError

NORM_BIAS_SUFFIX = "norm.bias"
"""Name ending of the anti-outlier norm biases msmodelslim stores (``*.input_layernorm.bias``, ...)."""

_UNSUPPORTED_SETTINGS = {
    "fa_quant_type": "attention (FA) quantization",
    "indexer_quant_type": "sparse-attention indexer quantization",
}


def unsupported_layer_error(
    prefix: str, quant_type: str, what: str, description: QuantDescription
) -> UnknownQuantTypeError:
    """The error for a quantized layer kind that has no scheme (embeddings, lm_head)."""
    return UnknownQuantTypeError(
        f"{what} ({quant_type}) is not supported yet; the layer must be FLOAT",
        file=description.source,
        layer=prefix,
    )


def norm_bias_shape_errors(checkpoint: CheckpointIndex, sizes: set[int]) -> list[CheckpointTensorError]:
    """One error per stored ``*norm.bias`` that is not a vector of a norm's size (``sizes``)."""
    return [
        CheckpointTensorError(
            f"norm bias {info.name!r} has shape {list(info.shape)}; a norm bias is one vector of the "
            f"norm's size ({sorted(sizes)})",
            file=info.file,
            layer=info.name.removesuffix(".bias"),
        )
        for info in checkpoint
        if info.name.endswith(NORM_BIAS_SUFFIX)
        and (len(info.shape) != 1 or (sizes and info.shape[0] not in sizes))
    ]


def unsupported_feature_errors(description: QuantDescription) -> list[UnknownQuantTypeError]:
    """One error per global setting that asks for a feature this plugin lacks (FA, indexer quantization)."""
    return [
        UnknownQuantTypeError(
            f"{key}={description.settings[key]!r} asks for {feature}, which this plugin "
            "does not implement yet; serving without it would silently change the numerics",
            file=description.source,
        )
        for key, feature in _UNSUPPORTED_SETTINGS.items()
        if description.settings.get(key)
    ]
