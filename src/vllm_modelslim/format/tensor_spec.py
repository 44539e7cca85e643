"""Declarations of the tensors a scheme reads from disk, and their validation.

A scheme lists, for one shard of a linear layer (``q_proj``, ``o_proj``, ...),
the tensors msmodelslim writes for it: suffix, accepted on-disk dtypes and a
shape template in terms of the shard's output features ``N`` and input
features ``K``. The same declaration drives two things: the vLLM parameters the
scheme registers, and :func:`validate_layer_tensors`, which checks the
checkpoint's safetensors headers against it while the model is being built, so
that a wrong file fails before any weight is read or any compute runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

import torch

from vllm_modelslim.format.checkpoint import CheckpointIndex
from vllm_modelslim.format.errors import CheckpointTensorError

Dim = str | int
"""A shape template entry: ``"N"`` (shard output features), ``"K"`` (input features) or a literal."""

FLOAT_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)


class TensorRole(Enum):
    """How a tensor is laid out across the shards of a fused layer."""

    WEIGHT = "weight"
    """``[N, K]`` rows per shard: stacked along the output dim."""
    PER_CHANNEL = "per_channel"
    """``[N]`` or ``[N, 1]``: one value per output channel, stacked like the weight rows."""
    PER_SHARD = "per_shard"
    """``[1]``: one scalar per shard (per-tensor quantization parameters)."""


@dataclass(frozen=True)
class CheckpointTensor:
    """One tensor that a scheme reads for every shard of a layer.

    Attributes:
        suffix: name after the shard prefix, e.g. ``"weight_scale"``.
        role: layout across shards (see :class:`TensorRole`).
        shape: on-disk shape template, e.g. ``("N", "K")``, ``("N", 1)``, ``(1,)``.
        dtypes: accepted on-disk dtypes.
        param_dtype: dtype of the vLLM parameter that receives it.
        decode: optional conversion applied to the loaded tensor before it is
            copied into the parameter (e.g. int64-encoded fp32 bits → fp32).
        optional: a missing tensor is allowed (the parameter keeps ``fill``).
        fill: initial value of the parameter (used when optional and absent).
    """

    suffix: str
    role: TensorRole
    shape: tuple[Dim, ...]
    dtypes: tuple[torch.dtype, ...]
    param_dtype: torch.dtype
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None
    optional: bool = False
    fill: float = 0.0

    def disk_shape(self, out_features: int, in_features: int) -> tuple[int, ...]:
        """The shape template with ``N``/``K`` substituted."""
        return tuple(_expected_dims(self, out_features, in_features))  # type: ignore[arg-type]


def _dtype_names(dtypes: Sequence[torch.dtype]) -> str:
    return "/".join(str(d).removeprefix("torch.") for d in dtypes)


def validate_layer_tensors(
    checkpoint: CheckpointIndex,
    layer: str,
    quant_type: str,
    shard_prefixes: Sequence[str],
    shard_out_features: Sequence[int] | None,
    in_features: int | None,
    tensors: Sequence[CheckpointTensor],
) -> None:
    """Check that every declared tensor of every shard is stored with a valid dtype and shape.

    Args:
        checkpoint: safetensors header index of the model folder.
        layer: vLLM layer prefix (for messages).
        quant_type: the layer's quant type (for messages).
        shard_prefixes: checkpoint prefix of each shard, in shard order.
        shard_out_features: full (unsharded) N of each shard, or None to skip
            shape checks of N-dependent dims (tensor parallelism).
        in_features: full K, or None to skip shape checks of K-dependent dims.
        tensors: the scheme's declarations.

    Raises:
        CheckpointTensorError: a required tensor is missing, or a tensor's dtype
            or shape does not match its declaration; the message names the
            tensor, the layer and the file.
    """
    for index, prefix in enumerate(shard_prefixes):
        n = shard_out_features[index] if shard_out_features is not None else None
        for spec in tensors:
            name = f"{prefix}.{spec.suffix}"
            info = checkpoint.get(name)
            if info is None:
                if spec.optional:
                    continue
                raise CheckpointTensorError(
                    f"{quant_type} needs tensor {name!r}, which no *.safetensors file in the folder stores",
                    file=checkpoint.folder,
                    layer=layer,
                )
            if info.dtype not in spec.dtypes:
                raise CheckpointTensorError(
                    f"tensor {name!r} has dtype {info.dtype_name}, but {quant_type} expects "
                    f"{_dtype_names(spec.dtypes)}",
                    file=info.file,
                    layer=layer,
                )
            expected = _expected_dims(spec, n, in_features)
            if len(info.shape) != len(expected) or any(
                want is not None and got != want for got, want in zip(info.shape, expected, strict=False)
            ):
                shown = ["?" if want is None else want for want in expected]
                raise CheckpointTensorError(
                    f"tensor {name!r} has shape {list(info.shape)}, but {quant_type} expects "
                    f"{shown} (N = output features, K = input features of the shard)",
                    file=info.file,
                    layer=layer,
                )


def _expected_dims(spec: CheckpointTensor, n: int | None, k: int | None) -> list[int | None]:
    sizes = {"N": n, "K": k}
    return [sizes[d] if isinstance(d, str) else d for d in spec.shape]
