"""Base class of linear schemes, and the context a scheme gets about its layer.

A scheme is format knowledge plus parameter declaration: it lists the tensors
msmodelslim writes for one shard (:meth:`LinearScheme.checkpoint_tensors`), the
base class turns that list into vLLM parameters (so fused q/k/v and gate/up
shards load into the right rows through vLLM's own parameter classes), the
scheme converts the loaded tensors into a kernel once
(:meth:`~LinearScheme.process_weights_after_loading`) and runs it
(:meth:`~LinearScheme.apply`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from vllm.model_executor.parameter import (
    BasevLLMParameter,
    ChannelQuantScaleParameter,
    ModelWeightParameter,
    PerTensorScaleParameter,
)

from vllm_modelslim.format.checkpoint import CheckpointIndex
from vllm_modelslim.format.tensor_spec import CheckpointTensor, TensorRole
from vllm_modelslim.format.value_checks import check_finite, check_integer_range, check_positive_finite


@dataclass(frozen=True)
class LayerContext:
    """What a scheme knows about the layer it serves.

    Attributes:
        prefix: vLLM layer prefix (``model.layers.0.self_attn.qkv_proj``).
        quant_type: the description's quant type for the layer.
        shard_prefixes: checkpoint prefix of each fused part, in shard order.
        description_source: path of the description file (for messages).
        checkpoint: safetensors header index of the model folder, when local.
    """

    prefix: str
    quant_type: str
    shard_prefixes: tuple[str, ...]
    description_source: str
    checkpoint: CheckpointIndex | None = None

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


def _decoding_loader(loader: Callable, decode: Callable[[torch.Tensor], torch.Tensor]) -> Callable:
    def load(param: torch.nn.Parameter, loaded_weight: torch.Tensor, *args, **kwargs):
        return loader(param, decode(loaded_weight), *args, **kwargs)

    return load


class LinearScheme(ABC):
    """One quant type for linear layers (``LinearBase`` and a quantized ``lm_head``).

    Subclasses set :attr:`quant_type`, declare :meth:`checkpoint_tensors`, and
    implement :meth:`process_weights_after_loading` and :meth:`apply`.
    """

    quant_type: ClassVar[str]

    def __init__(self, context: LayerContext):
        self.context = context

    @classmethod
    @abstractmethod
    def checkpoint_tensors(cls) -> tuple[CheckpointTensor, ...]:
        """The tensors stored for each shard of a layer with this quant type."""

    def create_weights(
        self,
        layer: torch.nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        params_dtype: torch.dtype,
        weight_loader: Callable,
    ) -> None:
        """Register one vLLM parameter per declared tensor on ``layer``.

        ``WEIGHT`` and ``PER_CHANNEL`` tensors become ``[sum(N_i), ...]``
        parameters that vLLM fills shard by shard; ``PER_SHARD`` scalars become a
        ``PerTensorScaleParameter`` with one slot per shard.
        """
        total_out = sum(output_partition_sizes)
        layer.logical_widths = list(output_partition_sizes)
        layer.modelslim_params_dtype = params_dtype
        for spec in self.checkpoint_tensors():
            loader = weight_loader if spec.decode is None else _decoding_loader(weight_loader, spec.decode)
            param = self._make_parameter(
                spec, total_out, input_size_per_partition, len(output_partition_sizes), loader
            )
            layer.register_parameter(spec.suffix, param)

    @staticmethod
    def _make_parameter(
        spec: CheckpointTensor, total_out: int, in_features: int, num_shards: int, loader: Callable
    ) -> BasevLLMParameter:
        if spec.role is TensorRole.WEIGHT:
            shape = spec.disk_shape(total_out, in_features)
            data = torch.full(shape, spec.fill, dtype=spec.param_dtype)
            return ModelWeightParameter(data=data, input_dim=1, output_dim=0, weight_loader=loader)
        if spec.role is TensorRole.PER_CHANNEL:
            data = torch.full(spec.disk_shape(total_out, in_features), spec.fill, dtype=spec.param_dtype)
            return ChannelQuantScaleParameter(data=data, output_dim=0, weight_loader=loader)
        data = torch.full((num_shards,), spec.fill, dtype=spec.param_dtype)
        return PerTensorScaleParameter(data=data, weight_loader=loader)

    @abstractmethod
    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        """Check the loaded values and build the kernel (once, after loading)."""

    @abstractmethod
    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``y = x·Wᵀ (+ bias)`` for ``x`` ``[..., K]``, returning ``[..., N]`` in ``x.dtype``."""

    # Helpers for subclasses -------------------------------------------------

    def check_scale(self, layer: torch.nn.Module, suffix: str) -> torch.Tensor:
        """``layer.<suffix>`` as float32, after checking it is finite and > 0."""
        values = getattr(layer, suffix).data
        check_positive_finite(
            values, what=suffix, layer=self.context.prefix, file=self.context.files_of(suffix)
        )
        return values.to(torch.float32)

    def check_zero_point(
        self, layer: torch.nn.Module, suffix: str, low: int = -128, high: int = 127
    ) -> torch.Tensor:
        """``layer.<suffix>`` as float32, after checking it holds integers in ``[low, high]``."""
        values = getattr(layer, suffix).data
        check_integer_range(
            values, low, high, what=suffix, layer=self.context.prefix, file=self.context.files_of(suffix)
        )
        return values.to(torch.float32)

    def check_finite(self, layer: torch.nn.Module, suffix: str) -> torch.Tensor:
        """``layer.<suffix>`` as float32, after checking it has no NaN/inf."""
        values = getattr(layer, suffix).data
        check_finite(values, what=suffix, layer=self.context.prefix, file=self.context.files_of(suffix))
        return values.to(torch.float32)


def apply_2d(x: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Run ``forward`` on ``x`` flattened to ``[M, K]`` and restore the leading dims."""
    leading = x.shape[:-1]
    y = forward(x.reshape(-1, x.shape[-1]))
    return y.reshape(*leading, y.shape[-1])
