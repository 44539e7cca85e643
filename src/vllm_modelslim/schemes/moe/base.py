"""Base of the MoE schemes: a routed expert is a SwiGLU MLP of two quantized projections.

vLLM fuses every expert of a layer into one ``FusedMoE`` module whose
parameters are stacked per expert: ``w13_*`` (gate rows then up rows, the
layout of a fused gate/up linear) and ``w2_*`` (down). On disk each expert is
stored like three ordinary linear layers
(``experts.<e>.{gate,up,down}_proj.<suffix>``, spec §1.5, §4.2-§4.5), with
exactly the tensors of the same quant type's linear scheme. A MoE scheme
therefore names the linear scheme of its projections
(:attr:`MoEScheme.projection_scheme`) and reuses its declarations, its
checks and its kernels; what it adds is the MoE part:

* parameters ``[E, ...]`` declared from the projection scheme's tensors, with
  the attributes vLLM's expert loader needs to place each expert's shards
  (``quant_method`` channel/group, tensor-parallel slicing of w13 rows and w2
  columns), and per-shard scalars (static ``input_scale``/``input_offset``,
  ``weight_shape``) kept per (expert, shard);
* after loading, one pair of projection kernels per local expert, built by the
  projection scheme from that expert's slice;
* the forward: ``y = w2(swiglu(w13(x)))`` per expert, with per-expert
  activation quantization done by the projection scheme (spec §4.2: dynamic
  per-token int8 before each grouped GEMM), and the weighted combine of
  :mod:`vllm_modelslim.kernels.grouped_experts`; or, where every projection is
  dynamic int8 × per-channel int8 and the platform has one, a single fused
  kernel for the whole layer (:mod:`vllm_modelslim.kernels.fused_int8_experts`).

The SwiGLU runs in float32 and is rounded to the activation dtype before the
down projection quantizes it (on the NPU the fused swiglu-quant kernel
quantizes the float32 product directly; the two differ only in bf16 runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from vllm_modelslim.format.checkpoint import CheckpointIndex
from vllm_modelslim.format.description import QuantDescription
from vllm_modelslim.format.tensor_spec import CheckpointTensor, ShapeSymbols, TensorRole
from vllm_modelslim.kernels.activation_quant import RowMaxReduce
from vllm_modelslim.kernels.fused_int8_experts import (
    FusedInt8ExpertsConfig,
    choose_fused_int8_experts,
    make_fused_int8_experts,
)
from vllm_modelslim.kernels.fused_weight_only_experts import (
    FusedWeightOnlyExpertsConfig,
    choose_fused_weight_only_experts,
    make_fused_weight_only_experts,
)
from vllm_modelslim.kernels.grouped_experts import grouped_experts_forward, grouped_experts_two_stage, swiglu
from vllm_modelslim.schemes.base import LayerContext, LinearScheme
from vllm_modelslim.schemes.moe.row_max_exchange import PrecomputedRowMax, row_max_exchange

W13, W2 = "w13", "w2"
"""vLLM's names of the fused gate/up and the down projection parameters."""


def _dynamic_int8_weights(scheme: LinearScheme, view) -> tuple | None:
    """A projection as dynamic int8 × per-channel int8 (``LinearScheme.dynamic_int8_channel_weight``)."""
    return scheme.dynamic_int8_channel_weight(view)


def _weight_only_int8_weights(scheme: LinearScheme, view) -> tuple | None:
    """A projection as weight-only per-channel int8 (``LinearScheme.weight_only_int8_channel_weight``)."""
    return scheme.weight_only_int8_channel_weight(view)


@dataclass(frozen=True)
class MoEContext:
    """What a MoE scheme knows about its ``FusedMoE`` layer.

    Attributes:
        prefix: vLLM layer prefix (``model.layers.0.mlp.experts``).
        quant_type: the description's quant type of the experts.
        checkpoint_prefix: the same layer in the checkpoint's naming.
        projections: checkpoint names of the gate, up and down projections
            (``gate_proj``, ``up_proj``, ``down_proj``; ``w1``, ``w3``, ``w2`` for MiniMax).
        num_experts: experts stored in the checkpoint (global, logical).
        description: the parsed description.
        checkpoint: safetensors header index of the model folder, when local.
        kv_consumer: the engine is a KV-transfer consumer (see :class:`LayerContext`).
    """

    prefix: str
    quant_type: str
    checkpoint_prefix: str
    projections: tuple[str, str, str]
    num_experts: int
    description: QuantDescription
    checkpoint: CheckpointIndex | None = None
    kv_consumer: bool = False

    def shard_prefixes(self, expert: int, projection: str) -> tuple[str, ...]:
        """Checkpoint prefixes of ``expert``'s shards of ``projection`` (``w13``: gate, up; ``w2``: down)."""
        gate, up, down = self.projections
        names = (gate, up) if projection == W13 else (down,)
        return tuple(f"{self.checkpoint_prefix}.{expert}.{name}" for name in names)

    def projection_context(self, expert: int, projection: str) -> LayerContext:
        """The linear-layer context of one expert's projection (its errors name expert and projection)."""
        return LayerContext(
            prefix=f"{self.prefix}.{expert}.{projection}",
            quant_type=self.quant_type,
            shard_prefixes=self.shard_prefixes(expert, projection),
            description=self.description,
            checkpoint=self.checkpoint,
            row_parallel=projection == W2,
            kv_consumer=self.kv_consumer,
        )


class ExpertProjection(torch.nn.Module):
    """One expert's projection as the projection scheme sees a linear layer.

    Holds the expert's slices of the stacked parameters under their checkpoint
    suffixes while the scheme builds its kernel, then only what the scheme
    attached (``modelslim_kernel`` ...).
    """

    def __init__(
        self,
        tensors: dict[str, torch.Tensor],
        logical_widths: list[int],
        params_dtype: torch.dtype,
        tp_rank: int = 0,
        tp_size: int = 1,
        row_max_reduce: RowMaxReduce | None = None,
    ):
        super().__init__()
        self._suffixes = list(tensors)
        for suffix, tensor in tensors.items():
            setattr(self, suffix, tensor)
        self.logical_widths = logical_widths
        self.modelslim_params_dtype = params_dtype
        # The rank within the group whose partial w2 outputs vLLM sums (as on vLLM's linear layers):
        # terms that must enter the sum once (static W8A8's int32 quant_bias) are added on rank 0 only.
        self.tp_rank, self.tp_size = tp_rank, tp_size
        # w2 under tensor parallelism: dynamic scales over the full row of all ranks (dynamic_forward).
        self.modelslim_row_max_reduce = row_max_reduce

    def drop_checkpoint_tensors(self) -> None:
        """Forget the checkpoint slices (the kernel keeps what it needs)."""
        for suffix in self._suffixes:
            delattr(self, suffix)
        self._suffixes = []


class SwiGLUExpert(torch.nn.Module):
    """``down(silu(gate(x)) · up(x))``, quantized projections; ``[rows, H] -> [rows, H]`` in ``x.dtype``."""

    def __init__(
        self,
        w13_scheme: LinearScheme,
        w13: ExpertProjection,
        w2_scheme: LinearScheme,
        w2: ExpertProjection,
    ):
        super().__init__()
        self.w13_scheme, self.w2_scheme = w13_scheme, w2_scheme
        self.w13, self.w2 = w13, w2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2_scheme.apply(self.w2, self.first(x), None)

    def first(self, x: torch.Tensor) -> torch.Tensor:
        """Gate/up and SwiGLU: ``[rows, H]`` → ``[rows, I]`` in ``x.dtype``."""
        return swiglu(self.w13_scheme.apply(self.w13, x, None), x.dtype)

    def second(self, hidden: torch.Tensor, row_max: torch.Tensor) -> torch.Tensor:
        """Down projection of ``hidden`` ``[rows, I]`` with the full rows' maxima ``row_max``.

        ``row_max`` ``[rows]`` float32 is combined across tensor-parallel ranks;
        the w2 quantizer's :class:`PrecomputedRowMax` hands it out.
        """
        self.w2.modelslim_row_max_reduce.pending = row_max
        return self.w2_scheme.apply(self.w2, hidden, None)


class MoEScheme:
    """One quant type for routed experts, built on the linear scheme of its projections.

    Subclasses set :attr:`quant_type` and :attr:`projection_scheme`; they may
    override :meth:`check_layer` for restrictions of their own.
    """

    quant_type: ClassVar[str]
    projection_scheme: ClassVar[type[LinearScheme]]

    def __init__(self, context: MoEContext):
        self.context = context
        # Expert 0 decides the layout (as in vllm-ascend); every expert is checked against it.
        self.w13 = self.projection_scheme(context.projection_context(0, W13))
        self.w2 = self.projection_scheme(context.projection_context(0, W2))
        self._expert_schemes: list[tuple[LinearScheme, LinearScheme]] = []
        self._tp_rank, self._tp_size = 0, 1
        self._row_max_reduce: RowMaxReduce | None = None

    def projection(self, name: str) -> LinearScheme:
        """Expert 0's scheme of projection ``name`` (``w13`` or ``w2``)."""
        return self.w13 if name == W13 else self.w2

    def check_layer(self, tp_size: int) -> None:
        """Raise for a layer configuration this scheme cannot compute exactly (default: none)."""

    # --- declarations -----------------------------------------------------------

    def expert_tensors(
        self, hidden_size: int, intermediate_size_per_partition: int
    ) -> list[tuple[str, CheckpointTensor, tuple[int, ...] | None, int]]:
        """Every stacked tensor of the layer: ``(projection, declaration, one expert's shape, shards)``.

        ``projection`` is ``w13`` or ``w2`` (the layer parameter is
        ``<projection>_<suffix>``); the shape is ``[N, K]``-style for weights and channel/group scales, one
        shard's shape for ``PER_SHARD_TENSOR`` (None: optional and absent) and
        ``()`` for ``PER_SHARD`` scalars. w13 has two shards (gate, up), w2 one.

        Raises:
            CheckpointTensorError: a packed or grouped dimension of the
                (tensor-parallel) partition is not divisible.
        """
        tensors = []
        shapes = self.projection_shapes(hidden_size, intermediate_size_per_partition)
        for name, (n, k, widths) in shapes.items():
            scheme = self.projection(name)
            scheme.check_partition(widths, k, what="per tensor-parallel partition: ")
            symbols = ShapeSymbols(n, k, scheme.group_size)
            for spec in scheme.checkpoint_tensors():
                if spec.role is TensorRole.PER_SHARD_TENSOR:
                    shape = scheme.per_shard_tensor_shape(spec)
                elif spec.role is TensorRole.PER_SHARD:
                    shape = ()
                else:
                    shape = symbols.shape(spec.shape)  # type: ignore[assignment]
                tensors.append((name, spec, shape, len(widths)))
        return tensors

    @staticmethod
    def projection_shapes(
        hidden_size: int, intermediate_size_per_partition: int
    ) -> dict[str, tuple[int, int, list[int]]]:
        """``{w13|w2: (N, K, shard widths)}`` of one expert on this rank."""
        inter = intermediate_size_per_partition
        return {W13: (2 * inter, hidden_size, [inter, inter]), W2: (hidden_size, inter, [hidden_size])}

    def prepare_experts(
        self,
        global_expert_ids: list[int],
        tp_rank: int = 0,
        tp_size: int = 1,
        row_max_reduce: RowMaxReduce | None = None,
    ) -> None:
        """Build the projection schemes of this rank's experts (global ids, in local order).

        Called while vLLM builds the model, so that every scheme is made under
        the model's configuration.

        Args:
            global_expert_ids: this rank's experts (expert parallelism keeps a subset).
            tp_rank: this rank's place among the ranks that split each expert's
                intermediate size (vLLM's MoE tensor-parallel rank; 0 under expert
                parallelism, where every expert runs whole on one rank).
            tp_size: the number of those ranks.
            row_max_reduce: when ``tp_size`` > 1 (pure tensor parallelism), the
                combine of the ranks' row maxima: w2 projections with dynamic
                per-token scales then take them over the full row, combined once per
                layer (:mod:`~vllm_modelslim.schemes.moe.row_max_exchange`); None otherwise.

        Raises:
            ValueError: ``row_max_reduce`` with ``tp_size`` 1.
        """
        if row_max_reduce is not None and tp_size == 1:
            raise ValueError("a row-maximum combine needs experts split over more than one rank")
        self._tp_rank, self._tp_size = tp_rank, tp_size
        self._row_max_reduce = row_max_reduce
        self._expert_schemes = [
            (
                self.projection_scheme(self.context.projection_context(e, W13)),
                self.projection_scheme(self.context.projection_context(e, W2)),
            )
            for e in global_expert_ids
        ]

    # --- after loading ---------------------------------------------------------

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        """Check every local expert's tensors, build the layer's kernels, then free the stacked parameters.

        One fused kernel for the whole layer where the experts compute dynamic
        int8 × per-channel int8 and a fused kernel fits this layer and platform
        (:mod:`~vllm_modelslim.kernels.fused_int8_experts`); else each local
        expert's projection kernels, built by its projection schemes.

        Sets ``layer.modelslim_local_experts`` (count), ``modelslim_fused_experts``
        (the fused kernel or None), ``modelslim_experts`` (per-expert modules or
        None) and ``modelslim_row_exchange`` (the TP combine of the per-expert path or None).
        """
        stacked = {
            name: {
                param_name.removeprefix(f"{name}_"): param.data
                for param_name, param in layer.named_parameters(recurse=False)
                if param_name.startswith(f"{name}_")
            }
            for name in (W13, W2)
        }
        views = []
        for local, schemes in enumerate(self._expert_schemes):
            pair = []
            for name, scheme in zip((W13, W2), schemes, strict=True):
                view = ExpertProjection(
                    {suffix: tensor[local] for suffix, tensor in stacked[name].items()},
                    list(layer.modelslim_widths[name]),
                    layer.modelslim_params_dtype,
                    tp_rank=self._tp_rank,
                    tp_size=self._tp_size,
                    row_max_reduce=PrecomputedRowMax() if name == W2 and self._row_max_reduce else None,
                )
                scheme.check_values(view)
                pair.append(view)
            views.append(pair)
        layer.modelslim_local_experts = len(views)
        layer.modelslim_fused_experts = self._fused_experts(layer, views)
        layer.modelslim_experts = None
        layer.modelslim_row_exchange = None
        if layer.modelslim_fused_experts is None:
            self._build_expert_kernels(layer, views)
        for name in (W13, W2):
            for suffix in stacked[name]:
                delattr(layer, f"{name}_{suffix}")

    def _fused_experts(self, layer: torch.nn.Module, views: list[list[ExpertProjection]]):
        """The layer's fused kernel; None (per-expert kernels) where the schemes or platform rule it out.

        Dynamic int8 × per-channel int8 experts first
        (:mod:`~vllm_modelslim.kernels.fused_int8_experts`), then weight-only
        int8 ones (:mod:`~vllm_modelslim.kernels.fused_weight_only_experts`).
        """
        if not views:
            return None
        first = self._expert_tensors(views, 0, _dynamic_int8_weights)
        if first is None:
            return self._fused_weight_only_experts(layer, views)
        config = FusedInt8ExpertsConfig(
            **self._fused_layer_fields(layer, views, first),
            row_exchange=self._row_max_reduce is not None,
            weight_bits=max(scheme.weight_bits for scheme in self._expert_schemes[0]),
        )
        kernel = choose_fused_int8_experts(config, label=self.quant_type)
        if kernel is None:
            return None
        tensors = self._stacked_experts(views, first, _dynamic_int8_weights)
        return make_fused_int8_experts(config, *tensors, kernel=kernel)

    def _fused_weight_only_experts(self, layer: torch.nn.Module, views: list[list[ExpertProjection]]):
        """The fused kernel of weight-only int8 experts; None where the schemes or platform rule it out."""
        first = self._expert_tensors(views, 0, _weight_only_int8_weights)
        if first is None:
            return None
        config = FusedWeightOnlyExpertsConfig(**self._fused_layer_fields(layer, views, first))
        kernel = choose_fused_weight_only_experts(config, label=self.quant_type)
        if kernel is None:
            return None
        tensors = self._stacked_experts(views, first, _weight_only_int8_weights)
        return make_fused_weight_only_experts(config, *tensors, kernel=kernel)

    def _expert_tensors(self, views: list[list[ExpertProjection]], local: int, query) -> list[tuple] | None:
        """Local expert ``local``'s ``query(scheme, view)`` per projection (w13, w2), or None.

        ``query`` (:func:`_dynamic_int8_weights`, :func:`_weight_only_int8_weights`) asks a
        projection scheme for its math as a fused kernel takes it; None where any projection has none.
        """
        pairs = zip(self._expert_schemes[local], views[local], strict=True)
        tensors = [query(scheme, view) for scheme, view in pairs]
        return None if any(t is None for t in tensors) else tensors

    def _stacked_experts(self, views: list[list[ExpertProjection]], first: list[tuple], query) -> list:
        """Every local expert's tensors stacked ``[E, ...]``, w13's parts then w2's.

        None for a part any expert lacks (zero points). Expert 0 decided (``first``): the
        rest are unpacked only now.
        """
        per_expert = [first] + [self._expert_tensors(views, local, query) for local in range(1, len(views))]
        stacked = []
        for projection, parts in enumerate(first):
            for part in range(len(parts)):
                values = [tensors[projection][part] for tensors in per_expert]
                stacked.append(None if any(v is None for v in values) else torch.stack(values))
        return stacked

    @staticmethod
    def _fused_layer_fields(
        layer: torch.nn.Module, views: list[list[ExpertProjection]], first: list[tuple]
    ) -> dict:
        """The config fields both fused experts families share, from the layer and expert 0."""
        return dict(
            device_type=first[0][0].device.type,
            activation_dtype=layer.modelslim_params_dtype,
            hidden_size=views[0][1].logical_widths[0],
            intermediate_size=views[0][0].logical_widths[0],
            expert_map=getattr(layer, "expert_map", None) is not None,
            router_weight_on_input=bool(getattr(layer, "apply_router_weight_on_input", False)),
        )

    def _build_expert_kernels(self, layer: torch.nn.Module, views: list[list[ExpertProjection]]) -> None:
        """Each local expert's projection kernels (``layer.modelslim_experts``) and the TP row exchange."""
        experts = torch.nn.ModuleList()
        exchanges = False
        for (w13_scheme, w2_scheme), (w13, w2) in zip(self._expert_schemes, views, strict=True):
            for scheme, view in ((w13_scheme, w13), (w2_scheme, w2)):
                scheme.process_weights_after_loading(view)
                if view.modelslim_row_max_reduce is not None:
                    # only dynamic quantizers take it (make_dynamic_quantizer); static/weight-only need none
                    quantizer = getattr(view, "modelslim_act_quant", None)
                    if getattr(quantizer, "row_max_reduce", None) is view.modelslim_row_max_reduce:
                        exchanges = True
                view.drop_checkpoint_tensors()
            experts.append(SwiGLUExpert(w13_scheme, w13, w2_scheme, w2))
        layer.modelslim_experts = experts
        layer.modelslim_row_exchange = row_max_exchange(self._row_max_reduce) if exchanges else None

    # --- forward ------------------------------------------------------------------

    def apply(
        self,
        layer: torch.nn.Module,
        x: torch.Tensor,
        topk_weights: torch.Tensor,
        topk_ids: torch.Tensor,
    ) -> torch.Tensor:
        """Routed experts' weighted sum ``[T, H]`` for ``x`` ``[T, H]`` (routing done by vLLM).

        With tensor-parallel dynamic w2 scales (``modelslim_row_exchange``) the
        experts run in two stages around one combine of the rows' maxima.
        """
        fused = getattr(layer, "modelslim_fused_experts", None)
        if fused is not None:
            return fused(x, topk_weights, topk_ids)
        options = dict(
            expert_map=getattr(layer, "expert_map", None),
            apply_router_weight_on_input=bool(getattr(layer, "apply_router_weight_on_input", False)),
        )
        exchange = getattr(layer, "modelslim_row_exchange", None)
        if exchange is not None:
            return grouped_experts_two_stage(
                x, topk_weights, topk_ids, layer.modelslim_experts, exchange, **options
            )
        return grouped_experts_forward(x, topk_weights, topk_ids, layer.modelslim_experts, **options)
