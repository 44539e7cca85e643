"""Inspect a checkpoint folder without building a model: the loader's checks, all problems at once.

The loader stops at the first error while vLLM builds the model. This module
runs the same checks on every layer and collects the errors instead:

* the description file (found, parsed, supported global settings), via
  :func:`~vllm_modelslim.format.load_description`;
* per vLLM layer: packed shards agree (:func:`~vllm_modelslim.format.resolve_layer`),
  the quant type has a scheme, and the scheme's declared tensors are stored
  with the right dtype and shape (:func:`~vllm_modelslim.format.validate_layer_tensors`,
  with ``N``/``K`` from ``config.json``, see :mod:`.shapes`); every expert of a
  MoE layer is described with one quant type and checked the same way;
* tensors stored for a layer the description does not mention (a description
  written for another model), norm biases of the wrong size;
* the values of scales, offsets, clip ratios and transforms against their
  declared :class:`~vllm_modelslim.format.value_checks.ValueRule` (unless
  ``read_values=False``). Only these small tensors are read; weights never are.

Compressed-tensors folders are summarised from ``config.json`` and the headers
(vLLM's own config validates them at load time).
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from safetensors import safe_open

from vllm_modelslim.format.checkpoint import CheckpointIndex
from vllm_modelslim.format.description import FLOAT, QuantDescription, load_description
from vllm_modelslim.format.errors import (
    CheckpointTensorError,
    DescriptionFormatError,
    LayerNotDescribedError,
    ModelSlimFormatError,
)
from vllm_modelslim.format.kv_cache_c8 import (
    C8,
    C8_TENSORS,
    c8_attention_prefixes,
    c8_tensor_errors,
    kv_channels_of,
)
from vllm_modelslim.format.layer_lookup import check_expert_entries, resolve_layer
from vllm_modelslim.format.packed_modules import packed_modules_for
from vllm_modelslim.format.quant_config import (
    norm_bias_shape_errors,
    unsupported_feature_errors,
    unsupported_layer_error,
)
from vllm_modelslim.format.tensor_spec import CheckpointTensor, TensorRole, validate_layer_tensors
from vllm_modelslim.format.value_checks import ValueRule, check_value_rule
from vllm_modelslim.inspection.report import CheckpointReport, LayerRow
from vllm_modelslim.inspection.shapes import projection_sizes
from vllm_modelslim.schemes import LayerContext, LinearScheme, require_scheme_class
from vllm_modelslim.schemes.moe import MoEContext
from vllm_modelslim.schemes.moe.base import W2, W13

ROW_PARALLEL_NAMES = frozenset({"o_proj", "down_proj", "out_proj", "w2", "dense_4h_to_h"})
"""Checkpoint layer names that vLLM builds as ``RowParallelLinear`` (their W4A8 ``scale_bias`` differs)."""

EMBEDDING_NAMES = frozenset({"embed_tokens", "lm_head", "word_embeddings", "wte"})
_EXPERT = re.compile(r"^(?P<layer>.+\.experts)\.(?P<expert>\d+)\.(?P<proj>[^.]+)$")
_NUM_EXPERTS_KEYS = ("num_experts", "n_routed_experts", "num_local_experts")


def inspect_checkpoint(folder: str | Path, *, read_values: bool = True) -> CheckpointReport:
    """Inspect a ModelSlim or compressed-tensors checkpoint folder.

    Args:
        folder: the model folder (``config.json``, description, ``*.safetensors``).
        read_values: also read and check scales/offsets (small tensors; weights
            are never read).

    Returns:
        The report; ``report.problems`` lists every error the loader would raise
        (empty when the folder loads). Never raises for a bad checkpoint.
    """
    path = Path(folder)
    report = CheckpointReport(folder=str(path))
    if not path.is_dir():
        try:
            load_description(path)  # raises the loader's "not a local folder" error
        except ModelSlimFormatError as error:
            report.add(error)
        return report
    config = _read_config(path, report)
    report.model_type = config.get("model_type") if isinstance(config.get("model_type"), str) else None
    index = _scan(path, report)
    quantization_config = config.get("quantization_config")
    if (
        isinstance(quantization_config, dict)
        and quantization_config.get("quant_method") == "compressed-tensors"
    ):
        report.format = "compressed-tensors"
        _summarise_compressed_tensors(report, quantization_config)
        return report
    try:
        description = load_description(path)
    except ModelSlimFormatError as error:
        report.add(error)
        return report
    report.format = "modelslim"
    report.description_file = description.source
    report.settings = dict(description.settings)
    report.tensors_by_quant_type = dict(Counter(description.entries.values()))
    for error in unsupported_feature_errors(description):
        report.add(error)
    _ModelSlimInspection(report, config, description, index, read_values).run()
    return report


def _read_config(folder: Path, report: CheckpointReport) -> dict[str, Any]:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        report.add(DescriptionFormatError(f"cannot read the model config: {exc}", file=path))
        return {}
    if not isinstance(config, dict):
        report.add(DescriptionFormatError("config.json is not a JSON object", file=path))
        return {}
    return config


def _scan(folder: Path, report: CheckpointReport) -> CheckpointIndex | None:
    if not folder.is_dir():
        return None
    try:
        index = CheckpointIndex.scan(folder)
    except ModelSlimFormatError as error:
        report.add(error)
        return None
    if not len(index):
        report.add(CheckpointTensorError("no *.safetensors file with tensors in the folder", file=folder))
    report.num_tensors = len(index)
    sizes: Counter[str] = Counter()
    for info in index:
        sizes[info.dtype_name] += info.nbytes
    report.bytes_by_dtype = dict(sizes.most_common())
    return index


def _summarise_compressed_tensors(report: CheckpointReport, config: dict[str, Any]) -> None:
    groups = config.get("config_groups") or {}
    summary = {}
    for name, group in groups.items() if isinstance(groups, dict) else ():
        weights = group.get("weights") or {}
        activations = group.get("input_activations") or {}
        summary[name] = {
            "targets": group.get("targets"),
            "weights": {
                k: weights.get(k) for k in ("num_bits", "type", "strategy", "group_size", "symmetric")
            },
            "input_activations": (
                {k: activations.get(k) for k in ("num_bits", "strategy", "dynamic", "symmetric")}
                if activations
                else None
            ),
        }
    report.settings = {
        "format": config.get("format"),
        "ignore": config.get("ignore"),
        "config_groups": summary,
    }


class _ModelSlimInspection:
    """One pass over the description and the headers, collecting every problem."""

    def __init__(
        self,
        report: CheckpointReport,
        config: dict[str, Any],
        description: QuantDescription,
        index: CheckpointIndex | None,
        read_values: bool,
    ):
        self.report = report
        self.config = config
        self.description = description
        self.index = index
        self.read_values = read_values and index is not None
        self.mapping = packed_modules_for(report.model_type, None)
        self.fused_name = {
            shard: fused for fused, shards in self.mapping.items() if fused != "experts" for shard in shards
        }
        self._files = ExitStack()
        self._handles: dict[Path, Any] = {}

    def _vllm_layer(self, prefix: str) -> tuple[str, int | None]:
        """The vLLM layer a checkpoint layer belongs to (fused shards, routed experts), and its expert id."""
        expert = _EXPERT.match(prefix)
        if expert:
            return expert["layer"], int(expert["expert"])
        head, _, name = prefix.rpartition(".")
        name = self.fused_name.get(name, name)
        return (f"{head}.{name}" if head else name), None

    def run(self) -> None:
        linear: dict[str, None] = {}
        moe: dict[str, int] = {}  # experts layer -> highest expert id described
        for prefix, quant_type in self.description.weight_entries():
            layer, expert = self._vllm_layer(prefix)
            if expert is not None:
                moe[layer] = max(expert, moe.get(layer, 0))
            elif prefix.rpartition(".")[2] in EMBEDDING_NAMES:
                self._embedding(prefix, quant_type)
            elif self._is_linear(prefix, quant_type):
                linear[layer] = None
        with self._files:
            for prefix in linear:
                self._guard(self._linear, prefix)
            for prefix, last_expert in moe.items():
                self._guard(self._moe, prefix, last_expert)
            self._kv_cache()
        self._undescribed_tensors()
        self._norm_biases()
        self.report.values_checked = self.read_values

    def _guard(self, check: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        """Run one check; record its error as a problem and go on."""
        try:
            check(*args, **kwargs)
        except ModelSlimFormatError as error:
            self.report.add(error)

    # --- layers --------------------------------------------------------------------------

    def _is_linear(self, prefix: str, quant_type: str) -> bool:
        """A 2-D stored weight, or a quantized entry (whose missing tensors are reported later)."""
        info = self.index.get(f"{prefix}.weight") if self.index is not None else None
        if info is None:
            return quant_type != FLOAT
        return len(info.shape) == 2

    def _embedding(self, prefix: str, quant_type: str) -> None:
        self.report.layers.append(LayerRow(prefix, "embedding", quant_type, (prefix,)))
        if quant_type != FLOAT:
            self.report.add(
                unsupported_layer_error(
                    prefix, quant_type, "a quantized embedding or lm_head", self.description
                )
            )

    def _scheme_class(self, quant_type: str, layer_type: str, prefix: str) -> type:
        return require_scheme_class(quant_type, layer_type, layer=prefix, file=self.description.source)

    def _linear(self, prefix: str) -> None:
        layer_quant = resolve_layer(self.description, prefix, self.mapping)
        assert layer_quant is not None
        shards = layer_quant.shard_prefixes
        if layer_quant.is_float:
            self.report.layers.append(
                LayerRow(prefix, "linear", FLOAT, shards, stored_bytes=self._stored_bytes(shards))
            )
            return
        row = LayerRow(prefix, "linear", layer_quant.quant_type, shards)
        self.report.layers.append(row)
        scheme_cls = self._scheme_class(layer_quant.quant_type, "linear", prefix)
        context = LayerContext(
            prefix=prefix,
            quant_type=layer_quant.quant_type,
            shard_prefixes=shards,
            description=self.description,
            checkpoint=self.index,
            row_parallel=prefix.rpartition(".")[2] in ROW_PARALLEL_NAMES,
        )
        scheme = scheme_cls(context)
        sizes = [
            projection_sizes(self.config, shard) or self._stored_sizes(scheme, shard) for shard in shards
        ]
        row.scheme = scheme_cls.__name__
        row.stored_bytes = self._stored_bytes(shards, scheme)
        if self.index is None:
            return
        known = [s for s in sizes if s is not None]
        in_features = known[0][1] if known and all(k == known[0][1] for _, k in known) else None
        out_features = [s[0] for s in sizes] if len(known) == len(sizes) else None
        if out_features is not None and in_features is not None:
            row.bf16_bytes = 2 * sum(out_features) * in_features
        self._check_tensors(scheme, shards, prefix, out_features, in_features)
        scheme.check_stored_shapes(in_features)

    def _moe(self, prefix: str, last_expert: int) -> None:
        gate, up, down = (p.rpartition(".")[2] for p in self.mapping.get("experts", [])) or (
            "gate_proj",
            "up_proj",
            "down_proj",
        )
        num_experts = next(
            (self.config[k] for k in _NUM_EXPERTS_KEYS if isinstance(self.config.get(k), int)), 0
        )
        num_experts = num_experts or last_expert + 1
        first = self.description.quant_type(f"{prefix}.0.{gate}.weight")
        shards = (f"{prefix}.0.{gate}", f"{prefix}.0.{up}", f"{prefix}.0.{down}")
        row = LayerRow(prefix, "moe", first or "?", shards, experts=num_experts)
        self.report.layers.append(row)
        if first is None:
            raise LayerNotDescribedError(
                f"the description has no entry '{prefix}.0.{gate}.weight' (expert 0 decides the type)",
                file=self.description.source,
                layer=prefix,
            )
        check_expert_entries(
            self.description,
            prefix,
            first,
            num_experts,
            lambda e: (f"{prefix}.{e}.{gate}", f"{prefix}.{e}.{up}", f"{prefix}.{e}.{down}"),
        )
        if first == FLOAT:
            return
        scheme_cls = self._scheme_class(first, "moe", prefix)
        context = MoEContext(
            prefix=prefix,
            quant_type=first,
            checkpoint_prefix=prefix,
            projections=(gate, up, down),
            num_experts=num_experts,
            description=self.description,
            checkpoint=self.index,
        )
        moe_scheme = scheme_cls(context)
        row.scheme = scheme_cls.__name__
        # The gate projection's (N, K) is (moe_intermediate_size, hidden_size).
        i, hidden = projection_sizes(self.config, f"{prefix}.0.{gate}") or (None, None)
        stored = bf16 = 0
        for projection in (W13, W2):
            # As the loader: expert 0's scheme declares the tensors every expert must store.
            scheme = moe_scheme.projection(projection)
            out_features = ([i, i] if projection == W13 else [hidden]) if i and hidden else None
            in_features = (hidden if projection == W13 else i) if i and hidden else None
            for expert in range(num_experts):
                shards = context.shard_prefixes(expert, projection)
                stored += self._stored_bytes(shards, scheme)
                bf16 += 2 * sum(out_features) * in_features if out_features and in_features else 0
                if self.index is not None:
                    self._guard(
                        self._check_tensors,
                        scheme,
                        shards,
                        f"{prefix} (expert {expert}, {projection})",
                        out_features,
                        in_features,
                        value_layer=context.projection_context(expert, projection).prefix,
                    )
        row.stored_bytes, row.bf16_bytes = stored, bf16

    # --- tensors ---------------------------------------------------------------------------

    def _check_tensors(
        self,
        scheme: LinearScheme,
        shards: Sequence[str],
        layer: str,
        out_features: list[int] | None,
        in_features: int | None,
        value_layer: str | None = None,
    ) -> None:
        assert self.index is not None
        context = scheme.context
        validate_layer_tensors(
            self.index,
            layer=layer,
            quant_type=context.quant_type,
            shard_prefixes=shards,
            shard_out_features=out_features,
            in_features=in_features,
            tensors=scheme.checkpoint_tensors(),
            group_size=scheme.group_size,
        )
        if self.read_values:
            for spec, values, file in self._rule_tensors(scheme, shards):
                self._guard(
                    check_value_rule,
                    values,
                    spec.values,
                    what=spec.suffix,
                    layer=value_layer or layer,
                    file=file,
                )

    def _rule_tensors(
        self, scheme: LinearScheme, shards: Sequence[str]
    ) -> Iterator[tuple[CheckpointTensor, torch.Tensor, str]]:
        """``(declaration, decoded values, file)`` of every stored tensor that has a value rule."""
        assert self.index is not None
        for spec in scheme.checkpoint_tensors():
            if spec.values is ValueRule.ANY:
                continue
            for shard in shards:
                name = f"{shard}.{spec.suffix}"
                info = self.index.get(name)
                if info is None:
                    continue
                values = self._handle(info.file).get_tensor(name)
                yield spec, spec.decode(values) if spec.decode else values, str(info.file)

    def _handle(self, path: Path) -> Any:
        if path not in self._handles:
            self._handles[path] = self._files.enter_context(safe_open(str(path), framework="pt"))
        return self._handles[path]

    def _stored_sizes(self, scheme: LinearScheme, shard: str) -> tuple[int, int] | None:
        """``(N, K)`` of a shard from its stored weight and the scheme's weight declaration."""
        weight = next((s for s in scheme.checkpoint_tensors() if s.role is TensorRole.WEIGHT), None)
        info = self.index.get(f"{shard}.{weight.suffix}") if weight and self.index is not None else None
        if weight is None or info is None or len(info.shape) != 2:
            return None
        n, k = weight.unpacked_shape(info.shape)
        return n, k

    def _stored_bytes(self, shards: Sequence[str], scheme: LinearScheme | None = None) -> int:
        if self.index is None:
            return 0
        suffixes = [s.suffix for s in scheme.checkpoint_tensors()] if scheme else ["weight", "bias"]
        return sum(
            info.nbytes
            for shard in shards
            for suffix in suffixes
            if (info := self.index.get(f"{shard}.{suffix}")) is not None
        )

    # --- folder-wide checks ------------------------------------------------------------------

    def _undescribed_tensors(self) -> None:
        """Stored 2-D ``.weight`` tensors the description does not list, one problem per vLLM layer."""
        if self.index is None:
            return
        layers: dict[str, list[str]] = defaultdict(list)
        for info in self.index:
            if not info.name.endswith(".weight") or len(info.shape) != 2:
                continue
            if self.description.quant_type(info.name) is not None:
                continue
            layers[self._vllm_layer(info.name.removesuffix(".weight"))[0]].append(info.name)
        for layer, names in layers.items():
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            self.report.add(
                LayerNotDescribedError(
                    f"stored weight(s) {shown} have no entry in the description, which was probably "
                    "written for another model",
                    file=self.description.source,
                    layer=layer,
                )
            )

    def _kv_cache(self) -> None:
        """The C8 int8 KV-cache tensors: the loader's header checks, then their values."""
        try:
            prefixes = c8_attention_prefixes(self.description)
        except ModelSlimFormatError as error:
            self.report.add(error)
            return
        for prefix in prefixes:
            scheme = self._scheme_class(C8, "attention", prefix).__name__
            self.report.layers.append(LayerRow(f"{prefix}.attn", "attention", C8, (prefix,), scheme=scheme))
        kv_channels = kv_channels_of(SimpleNamespace(**self.config))
        for error in c8_tensor_errors(self.description, self.index, kv_channels):
            self.report.add(error)
        if not self.read_values:
            return
        assert self.index is not None
        for prefix in prefixes:
            for tensor in C8_TENSORS:
                info = self.index.get(f"{prefix}.{tensor.suffix}")
                if info is not None and info.dtype is not None and info.dtype.is_floating_point:
                    values = self._handle(info.file).get_tensor(info.name)
                    self._guard(
                        check_value_rule,
                        values,
                        tensor.values,
                        what=tensor.suffix,
                        layer=prefix,
                        file=str(info.file),
                    )

    def _norm_biases(self) -> None:
        if self.index is not None:
            sizes = {self.config.get("hidden_size"), self.config.get("head_dim")} - {None}
            for error in norm_bias_shape_errors(self.index, sizes):
                self.report.add(error)
