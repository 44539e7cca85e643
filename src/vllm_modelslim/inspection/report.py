"""What ``vllm-modelslim inspect`` finds in a checkpoint folder, as plain data.

:class:`CheckpointReport` holds the facts (format, model type, per-layer quant
types, tensor counts, bytes by dtype, size against BF16) and every problem
found; it converts to JSON for ``--json`` and is rendered as tables by
:mod:`vllm_modelslim.inspection.render`.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from vllm_modelslim.format.errors import ModelSlimFormatError

_LAYER_INDEX = re.compile(r"\.(\d+)(?=\.|$)")


@dataclass(frozen=True)
class Problem:
    """One reason the checkpoint would not load (the loader raises the same error).

    Attributes:
        kind: the error class the loader raises, e.g. ``"CheckpointTensorError"``.
        file: the file (or folder) involved.
        layer: the vLLM layer involved, if any.
        message: what is wrong, without file and layer.
    """

    kind: str
    file: str | None
    layer: str | None
    message: str

    @classmethod
    def from_error(cls, error: ModelSlimFormatError) -> Problem:
        """The problem an error of the loader describes."""
        return cls(type(error).__name__, error.file, error.layer, error.detail)

    def __str__(self) -> str:
        return str(ModelSlimFormatError(self.message, file=self.file, layer=self.layer))


@dataclass
class LayerRow:
    """One vLLM layer (fused shards and routed experts count as one).

    Attributes:
        prefix: vLLM layer prefix in checkpoint naming (``model.layers.0.self_attn.qkv_proj``).
        layer_type: ``"linear"``, ``"moe"``, ``"embedding"`` or ``"attention"`` (an int8 KV cache).
        quant_type: the description's quant type (``"FLOAT"`` when unquantized).
        shards: checkpoint prefixes of the fused parts (one per expert projection for MoE: expert 0's).
        experts: number of routed experts (0 for a linear layer).
        scheme: the scheme class that serves the layer ('' for FLOAT or unknown types).
        stored_bytes: bytes of the layer's tensors in the checkpoint.
        bf16_bytes: bytes of its weights in BF16 (``2 · N · K`` per shard and expert).
    """

    prefix: str
    layer_type: str
    quant_type: str
    shards: tuple[str, ...]
    experts: int = 0
    scheme: str = ""
    stored_bytes: int = 0
    bf16_bytes: int = 0

    @property
    def pattern(self) -> str:
        """The prefix with layer/expert indices replaced by ``*`` (``model.layers.*.mlp.down_proj``)."""
        return _LAYER_INDEX.sub(".*", self.prefix)


@dataclass
class CheckpointReport:
    """Everything ``inspect`` learned about one folder.

    Attributes:
        folder: the inspected folder.
        format: ``"modelslim"``, ``"compressed-tensors"`` or ``"unknown"``.
        model_type: ``config.json``'s ``model_type``.
        description_file: the ModelSlim description file, if found.
        settings: the description's global settings (``version``, ``group_size``...), or
            compressed-tensors' ``quantization_config`` summary.
        layers: one row per vLLM layer.
        tensors_by_quant_type: description entries per quant type (ModelSlim).
        bytes_by_dtype: stored bytes per safetensors dtype name.
        num_tensors: tensors stored in all ``*.safetensors`` files.
        problems: every reason the folder would fail to load.
        values_checked: whether scale/offset values were read and checked.
    """

    folder: str
    format: str = "unknown"
    model_type: str | None = None
    description_file: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    layers: list[LayerRow] = field(default_factory=list)
    tensors_by_quant_type: dict[str, int] = field(default_factory=dict)
    bytes_by_dtype: dict[str, int] = field(default_factory=dict)
    num_tensors: int = 0
    problems: list[Problem] = field(default_factory=list)
    values_checked: bool = False

    @property
    def loadable(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def add(self, error: ModelSlimFormatError) -> None:
        """Record an error as a problem (the inspection goes on)."""
        self.problems.append(Problem.from_error(error))

    @property
    def stored_bytes(self) -> int:
        """Bytes of all stored tensors."""
        return sum(self.bytes_by_dtype.values())

    def quantized_layer_bytes(self) -> tuple[int, int]:
        """``(stored, bf16)`` bytes of the quantized layers (their weights and parameters vs BF16 weights)."""
        rows = [r for r in self.layers if r.quant_type != "FLOAT" and r.bf16_bytes]
        return sum(r.stored_bytes for r in rows), sum(r.bf16_bytes for r in rows)

    def pattern_table(self) -> list[dict[str, Any]]:
        """Layers grouped by ``(pattern, layer type, quant type)`` with the layer indices of each group."""
        groups: dict[tuple[str, str, str, str], list[str]] = defaultdict(list)
        for row in self.layers:
            key = (row.pattern, row.layer_type, row.quant_type, row.scheme)
            groups[key].append(",".join(_LAYER_INDEX.findall(row.prefix)) or "-")
        return [
            {
                "pattern": pattern,
                "layer_type": layer_type,
                "quant_type": quant_type,
                "scheme": scheme,
                "count": len(ids),
                "indices": _compress(ids),
            }
            for (pattern, layer_type, quant_type, scheme), ids in groups.items()
        ]

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (``--json``)."""
        stored_q, bf16_q = self.quantized_layer_bytes()
        return {
            "folder": self.folder,
            "format": self.format,
            "model_type": self.model_type,
            "description_file": self.description_file,
            "settings": self.settings,
            "loadable": self.loadable,
            "values_checked": self.values_checked,
            "layer_patterns": self.pattern_table(),
            "layers": [asdict(r) for r in self.layers],
            "tensors_by_quant_type": self.tensors_by_quant_type,
            "num_tensors": self.num_tensors,
            "bytes_by_dtype": self.bytes_by_dtype,
            "stored_bytes": self.stored_bytes,
            "quantized_layers": {
                "stored_bytes": stored_q,
                "bf16_bytes": bf16_q,
                "ratio_to_bf16": stored_q / bf16_q if bf16_q else None,
            },
            "problems": [asdict(p) | {"text": str(p)} for p in self.problems],
        }


def _compress(ids: list[str]) -> str:
    """``["0", "1", "2", "5"]`` → ``"0-2,5"`` (single indices only; nested ones are listed)."""
    if not all(i.isdigit() for i in ids):
        return " ".join(sorted(Counter(ids)))
    numbers = sorted({int(i) for i in ids})
    ranges: list[str] = []
    start = prev = numbers[0]
    for n in numbers[1:] + [None]:  # type: ignore[list-item]
        if n is not None and n == prev + 1:
            prev = n
            continue
        ranges.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ",".join(ranges)
