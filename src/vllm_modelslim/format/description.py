"""Find, parse and validate ModelSlim's ``quant_model_description.json``.

The file is a flat JSON object (spec §1.2). Keys that contain a dot are
per-tensor entries, ``"<checkpoint tensor name>": "<QUANT_TYPE>"`` (only the
``<prefix>.weight`` entry decides a layer's scheme). Keys without a dot are
global settings (``version``, ``model_quant_type``, ``group_size``,
``kv_cache_type``, ``metadata``, ...), whose values may be of any JSON type.

msmodelslim's newer pipeline writes ``quant_model_description.json``; its older
(MindIE-format) pipeline writes ``quant_model_description_<type>.json``. Both
names are accepted; more than one candidate in a folder is an error.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vllm_modelslim.format.errors import (
    AmbiguousDescriptionError,
    DescriptionFormatError,
    DescriptionNotFoundError,
)

DESCRIPTION_FILE_NAME = "quant_model_description.json"
LEGACY_DESCRIPTION_GLOB = "quant_model_description_*.json"
FLOAT = "FLOAT"
"""The quant type of a layer that stays unquantized."""

# A description lists a few entries per tensor; even a 1T-parameter model stays
# far below this. Anything larger is not a description file.
MAX_DESCRIPTION_BYTES = 256 * 1024 * 1024
MAX_KEY_CHARS = 4096
"""Longest accepted key: tensor names are far shorter; longer keys are hostile or corrupt input."""


@dataclass(frozen=True)
class QuantDescription:
    """A parsed ``quant_model_description.json``.

    Attributes:
        source: path of the file, or a label such as ``"<dict>"`` when it was
            built from an in-memory mapping; used in every error message.
        entries: per-tensor quant types, keyed by checkpoint tensor name.
        settings: the global (dot-free) keys and their raw JSON values.
    """

    source: str
    entries: Mapping[str, str]
    settings: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, raw: Any, source: str = "<dict>") -> QuantDescription:
        """Validate a decoded JSON value and split it into entries and settings.

        Raises:
            DescriptionFormatError: ``raw`` is not an object, a key is longer than
                :data:`MAX_KEY_CHARS`, or a per-tensor entry's value is not a
                non-empty string.
        """
        if not isinstance(raw, Mapping):
            raise DescriptionFormatError(
                f"expected a JSON object mapping tensor names to quant types, got {type(raw).__name__}",
                file=source,
            )
        entries: dict[str, str] = {}
        settings: dict[str, Any] = {}
        for key, value in raw.items():
            if not isinstance(key, str):
                raise DescriptionFormatError(f"key {key!r} is not a string", file=source)
            if len(key) > MAX_KEY_CHARS:
                raise DescriptionFormatError(
                    f"key of {len(key)} characters ({key[:60]!r}...) is longer than any tensor name "
                    f"({MAX_KEY_CHARS} allowed)",
                    file=source,
                )
            if "." not in key:
                settings[key] = value
                continue
            if not isinstance(value, str) or not value:
                raise DescriptionFormatError(
                    f"entry {key!r} must map to a quant type string such as 'W8A8_DYNAMIC' "
                    f"or 'FLOAT', got {value!r}",
                    file=source,
                )
            entries[key] = value
        if not entries:
            raise DescriptionFormatError(
                "the description has no per-tensor entries ('<tensor name>': '<QUANT_TYPE>')",
                file=source,
            )
        return cls(source=source, entries=entries, settings=settings)

    def quant_type(self, tensor_name: str) -> str | None:
        """Quant type of a checkpoint tensor, or None when it is not listed."""
        return self.entries.get(tensor_name)

    def weight_entries(self) -> Iterator[tuple[str, str]]:
        """``(layer prefix, quant type)`` for every ``<prefix>.weight`` entry."""
        for key, quant_type in self.entries.items():
            if key.endswith(".weight"):
                yield key[: -len(".weight")], quant_type

    def quant_types(self) -> set[str]:
        """Every quant type named by a ``.weight`` entry, FLOAT included."""
        return {quant_type for _, quant_type in self.weight_entries()}

    @property
    def version(self) -> str:
        """The ``version`` setting ("0" when absent, as vllm-ascend assumes)."""
        return str(self.settings.get("version", "0"))

    @property
    def group_size(self) -> int:
        """The ``group_size`` setting (0 = per-channel) as an int."""
        value = self.settings.get("group_size", 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DescriptionFormatError(
                f"'group_size' must be a non-negative integer, got {value!r}", file=self.source
            )
        return value

    def with_renamed_entries(self, rename: Mapping[str, str]) -> QuantDescription:
        """A copy whose entries also answer under new names (old names are kept)."""
        entries = dict(self.entries)
        for old, new in rename.items():
            if old in self.entries and new not in entries:
                entries[new] = self.entries[old]
        return QuantDescription(source=self.source, entries=entries, settings=self.settings)


def find_description_file(model_dir: str | Path) -> Path:
    """Locate the single description file in ``model_dir``.

    Raises:
        DescriptionNotFoundError: ``model_dir`` is not a folder, or holds no
            candidate (the message lists the JSON files it does hold).
        AmbiguousDescriptionError: more than one candidate; the message lists them.
    """
    folder = Path(model_dir)
    if not folder.is_dir():
        raise DescriptionNotFoundError(
            "not a local folder; a ModelSlim checkpoint needs its "
            f"{DESCRIPTION_FILE_NAME} next to the weights",
            file=folder,
        )
    candidates = sorted(
        {p for p in folder.glob(LEGACY_DESCRIPTION_GLOB) if p.is_file()}
        | ({folder / DESCRIPTION_FILE_NAME} if (folder / DESCRIPTION_FILE_NAME).is_file() else set())
    )
    if not candidates:
        present = sorted(p.name for p in folder.glob("*.json"))
        raise DescriptionNotFoundError(
            f"no {DESCRIPTION_FILE_NAME} (or {LEGACY_DESCRIPTION_GLOB}) found; "
            f"JSON files present: {present or 'none'}. Quantize the model with msmodelslim, "
            "or drop --quantization ascend for an unquantized model",
            file=folder,
        )
    if len(candidates) > 1:
        raise AmbiguousDescriptionError(
            "several description files found, keep exactly one: " + ", ".join(p.name for p in candidates),
            file=folder,
        )
    return candidates[0]


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        self.key = key


def parse_description_file(path: str | Path) -> QuantDescription:
    """Read and validate one description file.

    Raises:
        DescriptionFormatError: unreadable, too large, invalid JSON, duplicate
            keys, too deeply nested, not an object, or bad entry values.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_DESCRIPTION_BYTES:
            raise DescriptionFormatError(
                f"file is {size} bytes, larger than any description file "
                f"({MAX_DESCRIPTION_BYTES} bytes allowed)",
                file=path,
            )
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DescriptionFormatError(f"cannot read the file: {exc}", file=path) from exc
    try:
        raw = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise DescriptionFormatError(
            f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})", file=path
        ) from exc
    except _DuplicateKey as exc:
        raise DescriptionFormatError(f"key {exc.key[:200]!r} appears more than once", file=path) from None
    except RecursionError:
        raise DescriptionFormatError("JSON nesting is too deep", file=path) from None
    return QuantDescription.from_mapping(raw, source=str(path))


def load_description(model_dir: str | Path) -> QuantDescription:
    """Find and parse the description file of a local ModelSlim checkpoint."""
    return parse_description_file(find_description_file(model_dir))
