"""Inspect a checkpoint folder without building a model: the loader's checks, all problems at once.

The loader stops at the first error while vLLM builds the model. This module
reports the layer plan the loader itself uses
(:func:`~vllm_modelslim.format.layer_plan.plan_layers`: every layer's quant
type, scheme class and shards, and every problem found in ``config.json``, the
description and the safetensors headers), and adds what the plan leaves to
loading time:

* the values of scales, offsets, clip ratios and transforms against their
  declared :class:`~vllm_modelslim.format.value_checks.ValueRule` (unless
  ``read_values=False``). Only these small tensors are read; weights never are;
* stored bytes per layer and per dtype, and the quantized layers' size
  against their BF16 weights.

Compressed-tensors folders are summarised from ``config.json`` and the headers
(vLLM's own config validates them at load time).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from vllm_modelslim.format.checkpoint import CheckpointIndex
from vllm_modelslim.format.description import FLOAT, QuantDescription, load_description
from vllm_modelslim.format.errors import CheckpointTensorError, DescriptionFormatError, ModelSlimFormatError
from vllm_modelslim.format.kv_cache_c8 import C8_TENSORS
from vllm_modelslim.format.layer_plan import PlannedLayer, plan_layers
from vllm_modelslim.format.tensor_spec import CheckpointTensor
from vllm_modelslim.format.value_checks import ValueRule, check_value_rule
from vllm_modelslim.inspection.report import CheckpointReport, LayerRow
from vllm_modelslim.schemes import LinearScheme
from vllm_modelslim.schemes.moe.base import W2, W13


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
    """The plan's layers and problems as report rows, plus the value checks and byte counts."""

    def __init__(
        self,
        report: CheckpointReport,
        config: dict[str, Any],
        description: QuantDescription,
        index: CheckpointIndex | None,
        read_values: bool,
    ):
        self.report = report
        self.plan = plan_layers(config, description, index)
        self.index = index
        self.read_values = read_values and index is not None
        self._files = ExitStack()
        self._handles: dict[Path, Any] = {}

    def run(self) -> None:
        for error in self.plan.all_errors():
            self.report.add(error)
        with self._files:
            for planned in self.plan.layers.values():
                row = LayerRow(
                    planned.prefix,
                    planned.layer_type,
                    planned.quant_type,
                    planned.shards,
                    experts=planned.num_experts,
                    scheme=planned.scheme_class.__name__ if planned.scheme_class else "",
                )
                self.report.layers.append(row)
                if planned.layer_type == "linear":
                    self._linear(planned, row)
                elif planned.layer_type == "moe":
                    self._moe(planned, row)
                elif planned.layer_type == "attention":
                    self._kv_cache_values(planned)
        self.report.values_checked = self.read_values

    def _guard(self, check: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        """Run one check; record its error as a problem and go on."""
        try:
            check(*args, **kwargs)
        except ModelSlimFormatError as error:
            self.report.add(error)

    # --- layers --------------------------------------------------------------------------

    def _linear(self, planned: PlannedLayer, row: LayerRow) -> None:
        parts = planned.shard_layers or (planned,)  # a mixed layer: each shard with its own scheme
        if planned.is_mixed:
            row.scheme = " + ".join(p.scheme_class.__name__ if p.scheme_class else FLOAT for p in parts)
        for part in parts:
            row.stored_bytes += self._stored_bytes(part.shards, part.scheme)
            if part.out_features is not None and part.in_features is not None:
                row.bf16_bytes += 2 * sum(part.out_features) * part.in_features
            if part.scheme is not None and not part.errors:
                self._check_values(part.scheme, part.shards, part.prefix)

    def _moe(self, planned: PlannedLayer, row: LayerRow) -> None:
        moe_scheme = planned.scheme
        if moe_scheme is None:
            return
        context = moe_scheme.context
        i = planned.out_features[0] if planned.out_features else None
        hidden = planned.in_features
        failed = {error.layer for error in planned.errors}
        stored = bf16 = 0
        for expert in range(planned.num_experts):
            for projection in (W13, W2):
                # As the loader: expert 0's scheme declares the tensors every expert must store.
                scheme = moe_scheme.projection(projection)
                shards = context.shard_prefixes(expert, projection)
                stored += self._stored_bytes(shards, scheme)
                if i and hidden:
                    bf16 += 2 * (2 * i * hidden if projection == W13 else hidden * i)
                if f"{planned.prefix} (expert {expert}, {projection})" not in failed and not (
                    failed & {planned.prefix, f"{planned.prefix}.0.{projection}"}
                ):
                    self._check_values(scheme, shards, context.projection_context(expert, projection).prefix)
        row.stored_bytes, row.bf16_bytes = stored, bf16

    # --- values ----------------------------------------------------------------------------

    def _check_values(self, scheme: LinearScheme, shards: Sequence[str], layer: str) -> None:
        if not self.read_values:
            return
        for spec, values, file in self._rule_tensors(scheme, shards):
            self._guard(check_value_rule, values, spec.values, what=spec.suffix, layer=layer, file=file)

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
                if info is None or info.dtype not in spec.dtypes:
                    continue  # missing or mistyped: already a header problem
                values = self._handle(info.file).get_tensor(name)
                yield spec, spec.decode(values) if spec.decode else values, str(info.file)

    def _kv_cache_values(self, planned: PlannedLayer) -> None:
        """The C8 scales and offsets against their value rules (the plan checked their headers)."""
        if not self.read_values:
            return
        assert self.index is not None
        prefix = planned.shards[0]
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

    def _handle(self, path: Path) -> Any:
        if path not in self._handles:
            self._handles[path] = self._files.enter_context(safe_open(str(path), framework="pt"))
        return self._handles[path]

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
