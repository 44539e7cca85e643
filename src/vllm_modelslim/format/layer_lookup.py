"""Map a vLLM layer prefix to its quant type and checkpoint shard names (spec §1.5-§1.6).

Rules (ModelSlim semantics, with clearer errors than vllm-ascend's KeyError):

* Only ``<prefix>.weight`` entries decide a layer's quant type.
* A packed layer (``qkv_proj``, ``gate_up_proj``, ``fused_qkv_a_proj``) takes the
  type of its shards; ``FLOAT`` shards make the layer unquantized. Shards of
  different types (msmodelslim's own Qwen3 practice keeps ``q_proj`` FLOAT next
  to a quantized ``k_proj``/``v_proj``) make a *mixed* layer: each shard keeps
  its type and runs its own scheme (vllm-ascend refuses them, its issue #2588).
  Only the last component of the prefix is replaced (vllm-ascend replaces every
  occurrence, which breaks on prefixes that repeat the name).
* A quantizable linear layer must be described; embeddings and ``lm_head`` stay
  unquantized when absent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from vllm_modelslim.format.description import FLOAT, QuantDescription
from vllm_modelslim.format.errors import LayerNotDescribedError, PackedShardMismatchError

MIXED_SEPARATOR = " + "
"""Joins the shard types of a mixed layer into its quant type (``"FLOAT + W8A8_MIX + W8A8_MIX"``)."""


def mixed_quant_type(shard_quant_types: Iterable[str]) -> str:
    """The quant type shown for a fused layer whose shards have different types, in shard order."""
    return MIXED_SEPARATOR.join(shard_quant_types)


@dataclass(frozen=True)
class LayerQuant:
    """How one vLLM layer is quantized.

    Attributes:
        prefix: the vLLM layer prefix, e.g. ``model.layers.0.self_attn.qkv_proj``.
        quant_type: the description's quant type, e.g. ``"W8A8_DYNAMIC"`` or ``"FLOAT"``;
            for a mixed layer the shard types joined by :data:`MIXED_SEPARATOR`.
        shard_prefixes: checkpoint prefixes of the fused parts, in vLLM's shard
            order (``q, k, v``; ``gate, up``); ``(prefix,)`` for an unfused layer.
        shard_quant_types: each shard's quant type, in shard order.
    """

    prefix: str
    quant_type: str
    shard_prefixes: tuple[str, ...]
    shard_quant_types: tuple[str, ...] = ()

    @property
    def is_float(self) -> bool:
        """True when the layer stays unquantized."""
        return self.quant_type == FLOAT

    @property
    def is_mixed(self) -> bool:
        """True when the fused shards have different quant types (each runs its own scheme)."""
        return len(set(self.shard_quant_types)) > 1


def shard_prefixes(prefix: str, packed_mapping: Mapping[str, list[str]]) -> tuple[str, ...]:
    """Checkpoint prefixes that a (possibly fused) vLLM layer is loaded from."""
    head, _, proj = prefix.rpartition(".")
    if proj not in packed_mapping:
        return (prefix,)
    base = f"{head}." if head else ""
    return tuple(base + shard for shard in packed_mapping[proj])


def resolve_layer(
    description: QuantDescription,
    prefix: str,
    packed_mapping: Mapping[str, list[str]],
    *,
    required: bool = True,
) -> LayerQuant | None:
    """Quant type of the vLLM layer ``prefix``.

    Args:
        description: the parsed description file.
        prefix: vLLM layer prefix (already in checkpoint naming).
        packed_mapping: fused name → shard names (see ``packed_modules_for``).
        required: when False, a layer with no entry yields None instead of an error
            (used for embeddings and ``lm_head``, which stay unquantized then).

    Returns:
        The layer's quant type and shards (a mixed layer when the shards' types differ),
        or None when not ``required`` and undescribed.

    Raises:
        LayerNotDescribedError: a shard has no ``.weight`` entry and ``required``.
    """
    shards = shard_prefixes(prefix, packed_mapping)
    types: dict[str, str] = {}
    for shard in shards:
        quant_type = description.quant_type(f"{shard}.weight")
        if quant_type is None:
            if not required:
                return None
            what = "it" if shards == (prefix,) else f"its shard {shard!r}"
            raise LayerNotDescribedError(
                f"the description has no entry {shard + '.weight'!r}, so the quant type of {what} "
                "is unknown; the description was probably written for another model "
                "(every quantizable linear layer needs an entry, FLOAT for unquantized ones)",
                file=description.source,
                layer=prefix,
            )
        types[shard] = quant_type
    found = tuple(types[shard] for shard in shards)
    quant_type = found[0] if len(set(found)) == 1 else mixed_quant_type(found)
    return LayerQuant(prefix=prefix, quant_type=quant_type, shard_prefixes=shards, shard_quant_types=found)


def check_expert_entries(
    description: QuantDescription,
    prefix: str,
    quant_type: str,
    num_experts: int,
    expert_shards: Callable[[int], Iterable[str]],
) -> None:
    """Check that every expert of a routed-experts layer is described with ``quant_type``.

    Args:
        description: the parsed description.
        prefix: the experts layer (``model.layers.0.mlp.experts``), for messages.
        quant_type: expert 0's quant type, which decides the layer's scheme.
        num_experts: experts the model has.
        expert_shards: checkpoint prefixes of one expert's projections.

    Raises:
        LayerNotDescribedError: an expert projection has no ``.weight`` entry.
        PackedShardMismatchError: an expert projection has another quant type
            (vllm-ascend silently runs expert 0's type for all).
    """
    for expert in range(num_experts):
        for shard in expert_shards(expert):
            found = description.quant_type(f"{shard}.weight")
            if found is None:
                raise LayerNotDescribedError(
                    f"the description has no entry '{shard}.weight'; every expert of a "
                    f"quantized MoE layer needs one ({num_experts} experts)",
                    file=description.source,
                    layer=prefix,
                )
            if found != quant_type:
                raise PackedShardMismatchError(
                    f"'{shard}.weight' is {found}, but expert 0 is {quant_type}; vLLM"
                    " runs all experts of a layer as one layer, so they must share a quant type",
                    file=description.source,
                    layer=prefix,
                )
