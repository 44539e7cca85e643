"""Write a ModelSlim-layout W8A8_DYNAMIC or W8A16 checkpoint from a float Hugging Face checkpoint.

For models msmodelslim 26.1.0 has no adapter for (it quantizes causal LMs
through per-family adapters; a BERT encoder such as all-MiniLM-L6-v2 is not
one of them), this hand-made writer follows the tensor table of the tool's
own output for these two types (``../shared/msmodelslim``, spec §4.1/§4.3):

* ``<layer>.weight``: int8 ``[o, i]``, ``clamp(round(W / s), −128, 127)``;
* ``<layer>.weight_scale``: float32 ``[o, 1]``, ``s = max|W_row| / 127``
  (symmetric per-channel minmax, as msmodelslim's ``per_channel`` int8 weights);
* ``<layer>.weight_offset``: float32 ``[o, 1]`` zeros;

and a ``quant_model_description.json`` that lists every stored tensor
(``version`` "1.0.0", the quantized weights and their scale/offset under the
quant type, everything else ``FLOAT``). Biases, norms and embeddings are copied
unchanged. W8A8_DYNAMIC and W8A16 share this layout; the quant type decides
the math (per-token int8 activations, or bf16/fp32 activations). Outputs carry
a ``HANDMADE.md`` note, so tests can say which checkpoints are hand-made.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from vllm_modelslim.examples.handmade_checkpoints import (
    HANDMADE_MARKER,
    read_safetensors,
    save_handmade_folder,
)

WRITABLE_TYPES = ("W8A8_DYNAMIC", "W8A16")
_SKIPPED_NAMES = ("embed", "norm", "pooler", "lm_head")


def default_linear_weight(name: str, tensor: torch.Tensor) -> bool:
    """A 2-D ``.weight`` that is not an embedding, a norm, the pooler or the LM head."""
    lowered = name.lower()
    return name.endswith(".weight") and tensor.dim() == 2 and not any(s in lowered for s in _SKIPPED_NAMES)


def quantize_per_channel_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: ``(q int8 [o, i], scale float32 [o, 1])``.

    ``scale = max|W_row| / 127`` (1 for an all-zero row), ``q = clamp(round(W / scale), −128, 127)``.
    """
    w = weight.to(torch.float32)
    scale = w.abs().amax(dim=1, keepdim=True) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.clamp(torch.round(w / scale), -128, 127).to(torch.int8), scale


def write_modelslim_checkpoint(
    source: str | Path,
    target: str | Path,
    quant_type: str,
    is_linear_weight: Callable[[str, torch.Tensor], bool] = default_linear_weight,
) -> Path:
    """Quantize the float checkpoint ``source`` into a ModelSlim folder ``target`` (kept if complete).

    Args:
        source: a Hugging Face folder with ``*.safetensors`` (other files, sub-folders
            included, are copied: config, tokenizer, sentence-transformers modules).
        target: output folder.
        quant_type: one of :data:`WRITABLE_TYPES`.
        is_linear_weight: which ``(name, tensor)`` to quantize.

    Raises:
        ValueError: an unsupported ``quant_type``, or no tensor selected.
    """
    if quant_type not in WRITABLE_TYPES:
        raise ValueError(f"the writer makes {WRITABLE_TYPES}, not {quant_type!r}")
    source, target = Path(source), Path(target)
    if (target / HANDMADE_MARKER).exists():
        return target
    tensors = read_safetensors(source)
    out: dict[str, torch.Tensor] = {}
    entries: dict[str, str] = {}
    for name, tensor in tensors.items():
        if not is_linear_weight(name, tensor):
            out[name] = tensor.contiguous()
            entries[name] = "FLOAT"
            continue
        prefix = name.removesuffix(".weight")
        q, scale = quantize_per_channel_int8(tensor)
        out[name], out[f"{prefix}.weight_scale"] = q, scale
        out[f"{prefix}.weight_offset"] = torch.zeros_like(scale)
        for suffix in ("weight", "weight_scale", "weight_offset"):
            entries[f"{prefix}.{suffix}"] = quant_type
    if quant_type not in entries.values():
        raise ValueError(f"no linear weight selected in {source}")
    description = {"version": "1.0.0", "model_quant_type": quant_type, "group_size": 0, **entries}
    note = (
        f"Hand-made by vllm_modelslim.examples.modelslim_writer ({quant_type}, symmetric per-channel int8 "
        f"weights) from {source.name}; msmodelslim has no adapter for this model family.\n"
    )
    return save_handmade_folder(source, target, out, description, note)
