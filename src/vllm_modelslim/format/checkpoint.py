"""Index of the tensors in a checkpoint folder, read from safetensors headers only.

msmodelslim writes ``quant_model_weights-0000i-of-0000n.safetensors`` (new
pipeline) or ``quant_model_weight_<type>-0000i-of-0000n.safetensors`` (old
pipeline). vLLM's default loader reads every ``*.safetensors`` file of the
folder, so the index covers the same set: it lets the schemes check each layer's
tensors (presence, dtype, shape) while the model is being built, before any
weight is read, and lets error messages name the file a tensor lives in.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from vllm_modelslim.format.errors import CheckpointTensorError

MODELSLIM_WEIGHT_GLOBS = ("quant_model_weights*.safetensors", "quant_model_weight_*.safetensors")
"""File names msmodelslim gives its weight shards (new and old pipelines)."""

_SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


@dataclass(frozen=True)
class TensorInfo:
    """Header facts of one stored tensor: where it is, its dtype and its shape."""

    name: str
    file: Path
    dtype: torch.dtype | None
    dtype_name: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Bytes of the stored data (0 for a dtype torch does not know)."""
        return math.prod(self.shape) * (self.dtype.itemsize if self.dtype is not None else 0)


class CheckpointIndex:
    """Tensor name → :class:`TensorInfo` for every ``*.safetensors`` file of a folder."""

    def __init__(self, folder: Path, tensors: dict[str, TensorInfo]):
        self.folder = folder
        self._tensors = tensors

    @classmethod
    def scan(cls, folder: str | Path) -> CheckpointIndex:
        """Read the headers of all safetensors files in ``folder``.

        Raises:
            CheckpointTensorError: a file cannot be opened as safetensors, or one
                tensor name is stored in two files.
        """
        folder = Path(folder)
        tensors: dict[str, TensorInfo] = {}
        for path in sorted(folder.glob("*.safetensors")):
            try:
                with safe_open(str(path), framework="pt") as handle:
                    for name in handle.keys():
                        tensor_slice = handle.get_slice(name)
                        dtype_name = tensor_slice.get_dtype()
                        info = TensorInfo(
                            name=name,
                            file=path,
                            dtype=_SAFETENSORS_DTYPES.get(dtype_name),
                            dtype_name=dtype_name,
                            shape=tuple(tensor_slice.get_shape()),
                        )
                        if name in tensors:
                            raise CheckpointTensorError(
                                f"tensor {name!r} is stored twice, also in {tensors[name].file.name}; "
                                "remove the stale weight files from the folder",
                                file=path,
                            )
                        tensors[name] = info
            except CheckpointTensorError:
                raise
            except Exception as exc:  # safetensors raises its own error types
                raise CheckpointTensorError(
                    f"cannot read the safetensors header ({exc}); the file is truncated or not safetensors",
                    file=path,
                ) from exc
        return cls(folder, tensors)

    def get(self, name: str) -> TensorInfo | None:
        """Header facts of ``name``, or None when no file stores it."""
        return self._tensors.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def __iter__(self) -> Iterator[TensorInfo]:
        return iter(self._tensors.values())

    def __len__(self) -> int:
        return len(self._tensors)

    def file_of(self, name: str) -> Path | None:
        """The file that stores ``name`` (None when unknown)."""
        info = self._tensors.get(name)
        return info.file if info else None

    def modelslim_weight_files(self) -> list[Path]:
        """The weight files whose names follow msmodelslim's conventions."""
        found: set[Path] = set()
        for pattern in MODELSLIM_WEIGHT_GLOBS:
            found.update(self.folder.glob(pattern))
        return sorted(found)
