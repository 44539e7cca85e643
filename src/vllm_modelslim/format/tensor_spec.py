"""Declarations of the tensors a scheme reads from disk, and their validation.

A scheme lists, for one shard of a linear layer (``q_proj``, ``o_proj``, ...),
the tensors msmodelslim writes for it: suffix, accepted on-disk dtypes and a
shape template. Template entries are literals or symbols of the shard:

* ``"N"``: output features, ``"K"``: input features, ``"G"``: K-groups (``K / group_size``);
* ``"N/2"``, ``"K/8"``, ...: a packed dimension (two int4 per int8, eight per int32);
* ``"*"``: any size (e.g. FlatQuant transform matrices, checked by the scheme).

The same declaration drives two things: the vLLM parameters the scheme
registers, and :func:`validate_layer_tensors`, which checks the checkpoint's
safetensors headers against it while the model is being built, so that a wrong
file fails before any weight is read or any compute runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

import torch

from vllm_modelslim.format.checkpoint import CheckpointIndex
from vllm_modelslim.format.errors import CheckpointTensorError
from vllm_modelslim.format.value_checks import ValueRule

Dim = str | int
"""A shape template entry (see the module docstring)."""

ANY = "*"
FLOAT_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)


class TensorRole(Enum):
    """How a tensor is laid out across the shards of a fused layer."""

    WEIGHT = "weight"
    """``[N, K]`` rows per shard (possibly packed), stacked along the output dim."""
    PER_CHANNEL = "per_channel"
    """``[N]`` or ``[N, c]``: per output channel, stacked like the weight rows."""
    PER_GROUP = "per_group"
    """``[N, G]``: per output channel and K-group, stacked like the weight rows."""
    PER_SHARD = "per_shard"
    """``[1]``: one scalar per shard (per-tensor quantization parameters)."""
    PER_SHARD_TENSOR = "per_shard_tensor"
    """Any fixed shape, one copy per shard (e.g. FlatQuant transforms)."""


@dataclass(frozen=True)
class CheckpointTensor:
    """One tensor that a scheme reads for every shard of a layer.

    Attributes:
        suffix: name after the shard prefix, e.g. ``"weight_scale"``.
        role: layout across shards (see :class:`TensorRole`).
        shape: on-disk shape template, e.g. ``("N", "K")``, ``("N/2", "K")``, ``("N", "G")``.
        dtypes: accepted on-disk dtypes.
        param_dtype: dtype of the vLLM parameter that receives it.
        decode: optional conversion applied to the loaded tensor before it is
            copied into the parameter (e.g. int64-encoded fp32 bits → fp32).
        optional: a missing tensor is allowed (the parameter keeps ``fill``).
        fill: initial value of the parameter (used when optional and absent).
        packed_dim: for a packed weight, the dim holding several values per element.
        packed_factor: values per element along ``packed_dim``.
        values: what the loaded (decoded) values must satisfy; checked after
            loading and by ``vllm-modelslim inspect``.
    """

    suffix: str
    role: TensorRole
    shape: tuple[Dim, ...]
    dtypes: tuple[torch.dtype, ...]
    param_dtype: torch.dtype
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None
    optional: bool = False
    fill: float = 0.0
    packed_dim: int | None = None
    packed_factor: int = 1
    values: ValueRule = ValueRule.ANY

    def unpacked_shape(self, stored: Sequence[int]) -> tuple[int, ...]:
        """The logical shape of a stored tensor: its packed dim times ``packed_factor``."""
        shape = list(stored)
        if self.packed_dim is not None and len(shape) > self.packed_dim:
            shape[self.packed_dim] *= self.packed_factor
        return tuple(shape)


@dataclass(frozen=True)
class ShapeSymbols:
    """Sizes of the template symbols for one shard (None: unknown, not checked)."""

    n: int | None
    k: int | None
    group_size: int = 0

    def resolve(self, dim: Dim) -> int | None:
        """The size of one template entry.

        Raises:
            ValueError: a packed or grouped dimension is not divisible
                (the caller turns it into an error naming layer and file).
        """
        if isinstance(dim, int):
            return dim
        if dim == ANY:
            return None
        name, _, divisor = dim.partition("/")
        if name == "G":
            if self.k is None or not self.group_size:
                return None
            if self.k % self.group_size:
                raise ValueError(f"group size {self.group_size} does not divide K = {self.k}")
            return self.k // self.group_size
        size = {"N": self.n, "K": self.k}[name]
        if size is None or not divisor:
            return size
        if size % int(divisor):
            raise ValueError(f"{name} = {size} is not divisible by the pack factor {divisor}")
        return size // int(divisor)

    def shape(self, template: Sequence[Dim]) -> list[int | None]:
        """All entries of a template resolved."""
        return [self.resolve(d) for d in template]


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
    group_size: int = 0,
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
        group_size: K-group size for ``"G"`` dims (0: per-channel).

    Raises:
        CheckpointTensorError: a required tensor is missing, a tensor's dtype
            or shape does not match its declaration, a packed or grouped dim is
            not divisible, or the shards of a per-shard tensor differ in shape;
            the message names the tensor, the layer and the file.
    """
    for index, prefix in enumerate(shard_prefixes):
        symbols = ShapeSymbols(
            shard_out_features[index] if shard_out_features is not None else None, in_features, group_size
        )
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
            try:
                expected = symbols.shape(spec.shape)
            except ValueError as exc:
                raise CheckpointTensorError(f"tensor {name!r}: {exc}", file=info.file, layer=layer) from None
            if len(info.shape) != len(expected) or any(
                want is not None and got != want for got, want in zip(info.shape, expected, strict=False)
            ):
                shown = ["?" if want is None else want for want in expected]
                raise CheckpointTensorError(
                    f"tensor {name!r} has shape {list(info.shape)}, but {quant_type} expects "
                    f"{shown} (from {list(spec.shape)}: N = output features, K = input features "
                    "of the shard, G = K / group_size)",
                    file=info.file,
                    layer=layer,
                )
    for spec in tensors:
        if spec.role is TensorRole.PER_SHARD_TENSOR:
            shapes = {
                info.shape
                for p in shard_prefixes
                if (info := checkpoint.get(f"{p}.{spec.suffix}")) is not None
            }
            if len(shapes) > 1:
                raise CheckpointTensorError(
                    f"the fused shards store {spec.suffix!r} with different shapes {sorted(shapes)}",
                    file=checkpoint.file_of(f"{shard_prefixes[0]}.{spec.suffix}"),
                    layer=layer,
                )
