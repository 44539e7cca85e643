"""The int8 KV cache ("C8") part of a ModelSlim checkpoint (spec §1.7, §4.9; ERRATA 7).

msmodelslim's ``dynamic_cache`` step writes, for every attention layer it
calibrated, four 1-D tensors of ``num_kv_heads·head_dim`` channels (float, in
the model dtype) next to the projections::

    model.layers.N.self_attn.k_proj.kv_cache_scale   / kv_cache_offset
    model.layers.N.self_attn.v_proj.kv_cache_scale   / kv_cache_offset

and the description says ``"kv_cache_type": "C8"`` (plus a legacy
``"kv_quant_type": "C8"``), listing those tensors with the quant type ``C8``.
vLLM Ascend takes the C8 layers from the keys containing
``k_proj.kv_cache_scale``; a layer without them keeps a float KV cache.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from vllm_modelslim.format.checkpoint import CheckpointIndex
from vllm_modelslim.format.description import QuantDescription
from vllm_modelslim.format.errors import (
    CheckpointTensorError,
    DescriptionFormatError,
    ModelSlimFormatError,
    UnknownQuantTypeError,
)
from vllm_modelslim.format.tensor_spec import FLOAT_DTYPES
from vllm_modelslim.format.value_checks import ValueRule

C8 = "C8"
KV_CACHE_TYPE = "kv_cache_type"
SCALE_MARKER = ".k_proj.kv_cache_scale"
"""The description key suffix that marks an attention layer as C8 (as in vLLM Ascend)."""


@dataclass(frozen=True)
class C8Tensor:
    """One stored C8 tensor of an attention layer.

    Attributes:
        suffix: name after the attention prefix, e.g. ``"k_proj.kv_cache_scale"``.
        param: name of the vLLM ``Attention`` parameter it loads into (``k_cache_scale``).
        values: constraint on the loaded values.
    """

    suffix: str
    param: str
    values: ValueRule


C8_TENSORS: tuple[C8Tensor, ...] = (
    C8Tensor("k_proj.kv_cache_scale", "k_cache_scale", ValueRule.POSITIVE),
    C8Tensor("k_proj.kv_cache_offset", "k_cache_offset", ValueRule.INT8),
    C8Tensor("v_proj.kv_cache_scale", "v_cache_scale", ValueRule.POSITIVE),
    C8Tensor("v_proj.kv_cache_offset", "v_cache_offset", ValueRule.INT8),
)
"""Every C8 attention layer stores all four (msmodelslim writes zero offsets when symmetric)."""

CACHE_SCALE_RENAMES = {
    r"\.([kv])_proj\.kv_cache_(scale|offset)$": r".attn.\1_cache_\2",
}
"""Checkpoint name → vLLM ``Attention`` parameter name (regex, as vLLM Ascend's cache-scale mapper)."""


def c8_attention_prefixes(description: QuantDescription) -> list[str]:
    """Checkpoint prefixes (``model.layers.N.self_attn``) of the C8 attention layers, sorted.

    Raises:
        UnknownQuantTypeError: ``kv_cache_type`` names a cache type other than
            C8, or kv-cache tensors are listed without ``kv_cache_type: "C8"``.
        DescriptionFormatError: ``kv_cache_type`` is C8 but no layer lists a
            ``k_proj.kv_cache_scale`` tensor.
    """
    cache_type = description.settings.get(KV_CACHE_TYPE)
    prefixes = sorted(k.removesuffix(SCALE_MARKER) for k in description.entries if k.endswith(SCALE_MARKER))
    if cache_type in (None, "", False):
        if prefixes:
            raise UnknownQuantTypeError(
                f"the description lists KV-cache scales ({prefixes[0]}{SCALE_MARKER}, ...) but no "
                f"'{KV_CACHE_TYPE}': \"C8\"; without it the cache quantization would be silently dropped",
                file=description.source,
            )
        return []
    if cache_type != C8:
        raise UnknownQuantTypeError(
            f"{KV_CACHE_TYPE}={cache_type!r} is not a KV-cache type this plugin knows (only 'C8')",
            file=description.source,
        )
    if not prefixes:
        raise DescriptionFormatError(
            f"{KV_CACHE_TYPE} is 'C8' but no '<layer>{SCALE_MARKER}' entry says which attention layers "
            "have an int8 KV cache",
            file=description.source,
        )
    return prefixes


def c8_tensor_errors(
    description: QuantDescription, checkpoint: CheckpointIndex | None, kv_channels: int | None
) -> list[ModelSlimFormatError]:
    """Problems with the stored C8 tensors of every C8 layer (headers only; values are checked at load).

    Args:
        description: the parsed description.
        checkpoint: safetensors headers of the folder (None: only the description is checked).
        kv_channels: ``num_key_value_heads·head_dim`` from config.json (None: unknown).

    Returns:
        One error per missing, non-float or wrongly sized tensor, naming layer and file.
    """
    errors: list[ModelSlimFormatError] = []
    for prefix in c8_attention_prefixes(description):
        for tensor in C8_TENSORS:
            name = f"{prefix}.{tensor.suffix}"
            if name not in description.entries:
                errors.append(
                    CheckpointTensorError(
                        f"the description lists {prefix}{SCALE_MARKER} but not {name}",
                        file=description.source,
                        layer=prefix,
                    )
                )
                continue
            if checkpoint is None:
                continue
            info = checkpoint.get(name)
            if info is None:
                errors.append(
                    CheckpointTensorError(
                        f"C8 tensor {name!r} is listed in the description but stored in no weight file",
                        file=str(checkpoint.folder),
                        layer=prefix,
                    )
                )
            elif info.dtype not in FLOAT_DTYPES:
                errors.append(
                    CheckpointTensorError(
                        f"C8 tensor {name!r} is {info.dtype_name}; expected a float dtype",
                        file=str(info.file),
                        layer=prefix,
                    )
                )
            elif not c8_size_ok(info.shape, kv_channels):
                errors.append(
                    CheckpointTensorError(
                        f"C8 tensor {name!r} has shape {list(info.shape)}; expected one value per KV "
                        f"channel (num_key_value_heads·head_dim = {kv_channels}) or a single value",
                        file=str(info.file),
                        layer=prefix,
                    )
                )
    return errors


def c8_size_ok(shape: Sequence[int], kv_channels: int | None) -> bool:
    """Whether a C8 tensor of ``shape`` holds one value or one per KV channel (``kv_channels``, None: any)."""
    if len([s for s in shape if s != 1]) > 1:
        return False
    count = math.prod(shape)
    return count == 1 or kv_channels is None or count == kv_channels


def kv_channels_of(hf_config: object) -> int | None:
    """``num_key_value_heads · head_dim`` of a Hugging Face text config (None when it does not say)."""
    heads = getattr(hf_config, "num_key_value_heads", None) or getattr(hf_config, "num_attention_heads", None)
    head_dim = getattr(hf_config, "head_dim", None)
    if head_dim is None and heads:
        hidden = getattr(hf_config, "hidden_size", None)
        num_heads = getattr(hf_config, "num_attention_heads", None)
        head_dim = hidden // num_heads if hidden and num_heads else None
    return heads * head_dim if heads and head_dim else None
