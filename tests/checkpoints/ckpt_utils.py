"""Helpers for reading tool-made checkpoints in the fact tests."""

import torch
from safetensors.torch import load_file


def tensors(folder) -> dict[str, torch.Tensor]:
    """Every tensor of every safetensors file in ``folder``."""
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(path)))
    return out


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frobenius norm of ``a − b`` relative to ``b``'s."""
    return ((a.double() - b.double()).norm() / b.double().norm()).item()
