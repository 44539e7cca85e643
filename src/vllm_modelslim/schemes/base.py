"""Base class of linear schemes, and the context a scheme gets about its layer.

A scheme is format knowledge plus tensor declaration: it lists the tensors
msmodelslim writes for one shard (:meth:`LinearScheme.checkpoint_tensors`),
converts the loaded tensors into a kernel once
(:meth:`~LinearScheme.process_weights_after_loading`) and runs it
(:meth:`~LinearScheme.apply`). Turning the declarations into vLLM parameters
is the plugin's job (``vllm_modelslim.plugin.linear_method``), so this module
imports without vLLM.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from vllm_modelslim.format.checkpoint import CheckpointIndex
from vllm_modelslim.format.description import QuantDescription
from vllm_modelslim.format.errors import CheckpointTensorError
from vllm_modelslim.format.tensor_spec import CheckpointTensor, ShapeSymbols
from vllm_modelslim.format.value_checks import ValueRule, check_value_rule


@dataclass(frozen=True)
class LayerContext:
    """What a scheme knows about the layer it serves.

    Attributes:
        prefix: vLLM layer prefix (``model.layers.0.self_attn.qkv_proj``).
        quant_type: the description's quant type for the layer.
        shard_prefixes: checkpoint prefix of each fused part, in shard order.
        description: the parsed description (settings such as ``version``,
            ``group_size``; ``description.source`` names the file).
        checkpoint: safetensors header index of the model folder, when local.
        row_parallel: the layer is a ``RowParallelLinear`` (o_proj, down_proj).
        kv_consumer: the engine is a KV-transfer consumer (prefill/decode
            disaggregation: the decode side), which W8A8_MIX computes statically.
    """

    prefix: str
    quant_type: str
    shard_prefixes: tuple[str, ...]
    description: QuantDescription
    checkpoint: CheckpointIndex | None = None
    row_parallel: bool = False
    kv_consumer: bool = False

    def files_of(self, suffix: str) -> str | None:
        """Comma-separated file name(s) storing ``<shard>.<suffix>`` (for messages)."""
        if self.checkpoint is None:
            return None
        files = {
            str(path)
            for shard in self.shard_prefixes
            if (path := self.checkpoint.file_of(f"{shard}.{suffix}")) is not None
        }
        return ", ".join(sorted(files)) or str(self.checkpoint.folder)

    def stored_shape(self, suffix: str) -> tuple[int, ...] | None:
        """Header shape of the first shard's ``<suffix>`` tensor (None when unknown or absent)."""
        if self.checkpoint is None:
            return None
        info = self.checkpoint.get(f"{self.shard_prefixes[0]}.{suffix}")
        return None if info is None else info.shape

    def has_tensor(self, suffix: str) -> bool | None:
        """Whether the first shard stores ``<suffix>`` (None when the headers are unknown)."""
        if self.checkpoint is None:
            return None
        return f"{self.shard_prefixes[0]}.{suffix}" in self.checkpoint


class LinearScheme(ABC):
    """One quant type for linear layers.

    Subclasses set :attr:`quant_type`, declare :meth:`checkpoint_tensors`, and
    implement :meth:`process_weights_after_loading` and :meth:`apply`. A scheme
    instance serves one layer: its declarations may depend on the layer's
    context (checkpoint layout version, row/column parallelism, group size).
    """

    quant_type: ClassVar[str]
    weight_bits: ClassVar[int] = 8
    """Bits of the weight's integer values (4: int4 values, however the checkpoint stores them)."""
    row_parallel_split_error: ClassVar[str | None] = None
    """Why a row-parallel layer of this scheme cannot run on K-slices (None: it can)."""

    def __init__(self, context: LayerContext):
        self.context = context

    @abstractmethod
    def checkpoint_tensors(self) -> tuple[CheckpointTensor, ...]:
        """The tensors stored for each shard of this layer."""

    @property
    def group_size(self) -> int:
        """K-group size of the layer's per-group tensors (0: none)."""
        return 0

    def check_partition(self, shard_widths: list[int], in_features: int, what: str = "") -> None:
        """Check that every declared shape divides for these (tensor-parallel) shard sizes.

        Raises:
            CheckpointTensorError: a packed or grouped dimension is not divisible.
        """
        try:
            for width in shard_widths:
                for spec in self.checkpoint_tensors():
                    ShapeSymbols(width, in_features, self.group_size).shape(spec.shape)
        except ValueError as exc:
            raise CheckpointTensorError(
                f"{what}{exc}", file=self.context.description.source, layer=self.context.prefix
            ) from None

    def check_stored_shapes(self, in_features: int | None) -> None:
        """Scheme-specific checks of the stored headers beyond the declared templates (default: none).

        Called while the model is built (and by ``vllm-modelslim inspect``), after
        :func:`~vllm_modelslim.format.tensor_spec.validate_layer_tensors`.

        Raises:
            CheckpointTensorError: the stored shapes cannot serve this layer.
        """
        return None  # most schemes are fully described by their declarations

    def per_shard_tensor_shape(self, spec: CheckpointTensor) -> tuple[int, ...] | None:
        """Stored shape of a ``PER_SHARD_TENSOR`` (first shard); None when it is optional and absent.

        Raises:
            CheckpointTensorError: the checkpoint is not a local folder (its headers
                give the shape), or a required tensor is absent.
        """
        shape = self.context.stored_shape(spec.suffix)
        if shape is None and spec.optional and self.context.checkpoint is not None:
            return None
        if shape is None:
            raise CheckpointTensorError(
                f"the shape of {spec.suffix!r} is read from the checkpoint, which must be a local folder",
                file=self.context.description.source,
                layer=self.context.prefix,
            )
        return tuple(shape)

    @abstractmethod
    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        """Check the loaded values and build the kernel (once, after loading)."""

    @abstractmethod
    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``y = x·Wᵀ (+ bias)`` for ``x`` ``[..., K]``, returning ``[..., N]`` in ``x.dtype``."""

    def dynamic_int8_channel_weight(self, layer: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The layer's math as per-token dynamic int8 activations × a per-channel int8 weight, if it is that.

        Schemes that compute ``y = s_x · s_w[n] · Σ_k x_q · W_q[n, k]`` (no bias
        term, no offsets) return ``(W_q int8 [N, K], s_w float32 [N])`` from the
        loaded (checked) tensors (int4 values where :attr:`weight_bits` is 4); MoE
        layers hand their experts' pairs to a fused kernel
        (:mod:`vllm_modelslim.kernels.fused_int8_experts`). Default: None.
        """
        return None

    def weight_only_int8_channel_weight(
        self, layer: torch.nn.Module
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
        """The layer's math as float activations × a per-channel weight-only int8 weight, if it is that.

        Schemes that compute ``y = x · ((W_q − z)·s)ᵀ`` (no bias term) return
        ``(W_q int8 [N, K], s float32 [N], z float32 [N] or None)`` from the
        loaded (checked) tensors; MoE layers hand their experts' triples to a
        fused kernel (:mod:`vllm_modelslim.kernels.fused_weight_only_experts`).
        Default: None.
        """
        return None

    # Helpers for subclasses -------------------------------------------------

    def error_file(self, suffix: str) -> str:
        """The file(s) to name in an error about ``<shard>.<suffix>``."""
        return self.context.files_of(suffix) or self.context.description.source

    def check_values(self, layer: torch.nn.Module) -> None:
        """Check every loaded parameter against its declaration's :class:`ValueRule`.

        Runs after loading, before the kernel is built (``vllm-modelslim
        inspect`` applies the same rules to the stored tensors).

        Raises:
            InvalidScaleError: a scale is zero, negative, NaN or inf, an offset
                is out of range or not zero where it must be (names layer and file).
        """
        for spec in self.checkpoint_tensors():
            param = getattr(layer, spec.suffix, None)
            if param is not None and spec.values is not ValueRule.ANY:
                check_value_rule(
                    param.data,
                    spec.values,
                    what=spec.suffix,
                    layer=self.context.prefix,
                    file=self.error_file(spec.suffix),
                )

    @staticmethod
    def float_param(layer: torch.nn.Module, suffix: str) -> torch.Tensor:
        """``layer.<suffix>`` as float32 (its values were checked by :meth:`check_values`)."""
        return getattr(layer, suffix).data.to(torch.float32)


def infer_group_size(context: LayerContext, weight: CheckpointTensor, scale_suffix: str) -> int:
    """K-group size of a per-group layer, from the safetensors headers (else the description).

    ``K`` is the stored weight's input dim (times its pack factor when packed
    along K) and ``G`` the scale's second dim; ``g = K / G``.

    Raises:
        CheckpointTensorError: ``G`` does not divide ``K``, or neither the headers
            nor the description's ``group_size`` tell the group size.
    """
    weight_shape, scale_shape = context.stored_shape(weight.suffix), context.stored_shape(scale_suffix)
    if weight_shape is not None and scale_shape is not None and len(weight_shape) == 2 == len(scale_shape):
        k = weight.unpacked_shape(weight_shape)[1]
        if scale_shape[1] and k % scale_shape[1] == 0:
            return k // scale_shape[1]
        raise CheckpointTensorError(
            f"{scale_shape[1]} scale groups do not divide K = {k}",
            file=context.files_of(scale_suffix),
            layer=context.prefix,
        )
    if context.description.group_size:
        return context.description.group_size
    raise CheckpointTensorError(
        "per-group quantization needs a group size: no 'group_size' in the description and no "
        "checkpoint headers to infer it from",
        file=context.description.source,
        layer=context.prefix,
    )


def apply_2d(x: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Run ``forward`` on ``x`` flattened to ``[M, K]`` and restore the leading dims."""
    leading = x.shape[:-1]
    y = forward(x.reshape(-1, x.shape[-1]))
    return y.reshape(*leading, y.shape[-1])


def shard_groups(widths: list[int], keys: list) -> list[tuple[int, int, object]]:
    """Merge consecutive shards with equal ``keys`` into ``(row_start, row_stop, key)`` ranges.

    Fused shards (q/k/v, gate/up) see the same input; when their activation
    quantization parameters (static scale/offset, FlatQuant transform and clip)
    agree, one quantization serves all of them.
    """
    groups: list[tuple[int, int, object]] = []
    start = 0
    for width, key in zip(widths, keys, strict=True):
        if groups and _same(groups[-1][2], key):
            groups[-1] = (groups[-1][0], start + width, key)
        else:
            groups.append((start, start + width, key))
        start += width
    return groups


def _same(a: object, b: object) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    return a == b
