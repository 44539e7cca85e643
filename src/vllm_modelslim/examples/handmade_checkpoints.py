"""Hand-made checkpoints for the layouts msmodelslim 26.1.0 no longer writes.

Tool-made checkpoints are the ground truth; these writers only fill gaps, and
every one starts from a tool-made checkpoint and changes nothing but the
storage layout, following the spec's tensor tables:

* :func:`write_w4a8_version0_layout`: W4A8_DYNAMIC ``version`` "0" (spec §4.5
  legacy v0, published by older ModelSlim releases): ``weight`` int8 ``[o, i]``
  with **one** int4 value per byte, per-group ``weight_scale_second`` /
  ``weight_offset_second``, no ``scale_bias``. Made from the tool's per-group
  "1.0.0" checkpoint by unpacking the nibble pairs.
* :func:`write_w4a8_unpacked_per_channel_layout`: W4A8_DYNAMIC per-channel in
  the layout of vllm-ascend's compressed-tensors W4A8 MoE path (spec §4.5):
  one int4 value per int8 ``[o, i]``, bf16 ``weight_scale`` ``[o, 1]``, no
  offset and no ``scale_bias``. Made from the tool's per-channel checkpoint.
* :func:`write_w4a16_pack_quantized_layout`: W4A16 in LLM-Compressor's
  ``pack-quantized`` layout (spec §4.4): ``weight_packed`` int32 ``[o, i/8]``
  (offset-8 nibbles, LSB first), ``weight_scale`` ``[o, i/g]``,
  ``weight_shape`` ``[2]``. Made from the tool's symmetric W4A16 checkpoint.

* :func:`write_float_rollback`: single checkpoint layers rolled back to FLOAT
  (what msmodelslim's ``disable_names`` and its sensitivity-based fallback
  write): the layer's quantized tensors are replaced by the float weight they
  represent, in the model dtype, so fused layers get FLOAT shards next to
  quantized ones. Made from any tool-made W8A8 / W8A8_DYNAMIC / W8A8_MIX /
  W8A16 checkpoint.

They keep the description's ``<layer>.weight`` entries (they decide the
layer's quant type; the rollback sets them to FLOAT) and the unchanged float
tensors, config and tokenizer.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vllm_modelslim.format.description import DESCRIPTION_FILE_NAME, load_description
from vllm_modelslim.kernels.int4_packing import pack_int4_to_int32, unpack_int4_pairs

HANDMADE_MARKER = "HANDMADE.md"

Rewrite = Callable[[str, dict[str, torch.Tensor], dict[str, str]], None]
WEIGHTS_FILE = "quant_model_weights-00001-of-00001.safetensors"


def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every ``*.safetensors`` file in ``folder``."""
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors


def save_handmade_folder(
    source: Path, target: Path, tensors: dict[str, torch.Tensor], description: dict, note: str
) -> Path:
    """Write ``target`` atomically: ``source``'s other files, ``tensors``, the description and a marker.

    Everything but the weights (config, tokenizer, sub-folders) is copied from
    ``source``; the folder is built as ``<target>.partial`` and renamed when
    complete, with :data:`HANDMADE_MARKER` holding ``note``.
    """
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(
        source, partial, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json", ".complete")
    )
    save_file(tensors, str(partial / WEIGHTS_FILE), metadata={"format": "pt"})
    (partial / DESCRIPTION_FILE_NAME).write_text(json.dumps(description, indent=2))
    (partial / HANDMADE_MARKER).write_text(note)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def _rewrite(
    source: Path, target: Path, quant_type: str, rewrite: Rewrite, settings: dict, note: str
) -> Path:
    """Copy ``source`` to ``target`` and apply ``rewrite(prefix, tensors, entries)`` to each layer."""
    if (target / HANDMADE_MARKER).exists():
        return target
    description = load_description(source)
    entries = dict(description.entries)
    tensors = read_safetensors(source)
    for prefix, layer_type in description.weight_entries():
        if layer_type == quant_type:
            rewrite(prefix, tensors, entries)
    raw = {**description.settings, **settings, **entries}
    marker = f"Hand-made from the tool-made checkpoint {source}.\n\n{note}\n"
    return save_handmade_folder(source, target, tensors, raw, marker)


def _drop(prefix: str, suffix: str, tensors: dict[str, torch.Tensor], entries: dict[str, str]) -> None:
    tensors.pop(f"{prefix}.{suffix}", None)
    entries.pop(f"{prefix}.{suffix}", None)


def write_w4a8_version0_layout(source: Path, target: Path) -> Path:
    """W4A8_DYNAMIC "version 0" (one int4 per int8) from a tool-made per-group "1.0.0" checkpoint.

    Raises:
        ValueError: the source is not a per-group, pair-packed W4A8_DYNAMIC checkpoint.
    """

    def rewrite(prefix: str, tensors: dict[str, torch.Tensor], entries: dict[str, str]) -> None:
        weight, scale = tensors[f"{prefix}.weight"], tensors[f"{prefix}.weight_scale"]
        if 2 * weight.shape[0] != scale.shape[0] or f"{prefix}.weight_scale_second" not in tensors:
            raise ValueError(f"{prefix} is not a per-group W4A8_DYNAMIC layer with two int4 per byte")
        tensors[f"{prefix}.weight"] = unpack_int4_pairs(weight, dim=0).contiguous()
        _drop(prefix, "scale_bias", tensors, entries)

    note = "Layout: W4A8_DYNAMIC version 0, one int4 per int8, per-group scales, no scale_bias."
    return _rewrite(Path(source), Path(target), "W4A8_DYNAMIC", rewrite, {"version": "0"}, note)


def write_w4a8_unpacked_per_channel_layout(source: Path, target: Path) -> Path:
    """W4A8_DYNAMIC per-channel, one int4 per int8, bf16 scales, no offset/scale_bias.

    Raises:
        ValueError: the source is not a per-channel, pair-packed W4A8_DYNAMIC checkpoint.
    """

    def rewrite(prefix: str, tensors: dict[str, torch.Tensor], entries: dict[str, str]) -> None:
        weight, scale = tensors[f"{prefix}.weight"], tensors[f"{prefix}.weight_scale"]
        if 2 * weight.shape[0] != scale.shape[0] or f"{prefix}.weight_scale_second" in tensors:
            raise ValueError(f"{prefix} is not a per-channel W4A8_DYNAMIC layer with two int4 per byte")
        tensors[f"{prefix}.weight"] = unpack_int4_pairs(weight, dim=0).contiguous()
        tensors[f"{prefix}.weight_scale"] = scale.to(torch.bfloat16)
        for suffix in ("weight_offset", "scale_bias"):
            _drop(prefix, suffix, tensors, entries)

    note = "Layout: W4A8_DYNAMIC per-channel, one int4 per int8, bf16 weight_scale, no offset, no scale_bias."
    return _rewrite(Path(source), Path(target), "W4A8_DYNAMIC", rewrite, {}, note)


def write_w4a16_pack_quantized_layout(source: Path, target: Path) -> Path:
    """W4A16 in LLM-Compressor's int32 ``pack-quantized`` layout from a tool-made symmetric W4A16 checkpoint.

    Raises:
        ValueError: the source has non-zero weight offsets (pack-quantized here is symmetric).
    """

    def rewrite(prefix: str, tensors: dict[str, torch.Tensor], entries: dict[str, str]) -> None:
        offset = tensors.get(f"{prefix}.weight_offset")
        if offset is not None and bool((offset != 0).any()):
            raise ValueError(f"{prefix} has non-zero weight offsets; use a symmetric W4A16 checkpoint")
        values = unpack_int4_pairs(tensors.pop(f"{prefix}.weight"), dim=0)
        tensors[f"{prefix}.weight_packed"] = pack_int4_to_int32(values, dim=1).contiguous()
        tensors[f"{prefix}.weight_shape"] = torch.tensor(list(values.shape), dtype=torch.int32)
        entries[f"{prefix}.weight_packed"] = entries[f"{prefix}.weight_shape"] = "W4A16"
        _drop(prefix, "weight_offset", tensors, entries)

    note = "Layout: W4A16 pack-quantized, weight_packed int32 [o, i/8] (offset 8, LSB first) + weight_shape."
    return _rewrite(Path(source), Path(target), "W4A16", rewrite, {}, note)


def dequantized_int8_weight(prefix: str, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """The float32 ``[o, i]`` weight an int8 layer represents (spec §4.1-§4.3).

    ``(W_q − weight_offset)·weight_scale`` when ``weight_scale`` is stored
    (W8A8_DYNAMIC, W8A8_MIX, W8A16, old-pipeline W8A8); else static W8A8's
    ``W_q·deq_scale/input_scale`` (``deq_scale = input_scale·weight_scale``; int64
    fp32 bit patterns are decoded).

    Raises:
        ValueError: the layer is not int8 per-channel, or a static W8A8 layer's
            ``quant_bias`` holds a folded float bias (a FLOAT layer would need it back).
    """
    weight = tensors[f"{prefix}.weight"]
    if weight.dtype != torch.int8 or weight.dim() != 2:
        raise ValueError(f"{prefix}.weight is not an int8 [o, i] weight")
    q = weight.to(torch.float32)
    scale = tensors.get(f"{prefix}.weight_scale")
    if scale is not None:
        offset = tensors.get(f"{prefix}.weight_offset", torch.zeros_like(scale))
        return (q - offset.to(torch.float32).reshape(-1, 1)) * scale.to(torch.float32).reshape(-1, 1)
    deq = tensors[f"{prefix}.deq_scale"]
    deq = (deq.to(torch.int32).view(torch.float32) if deq.dtype == torch.int64 else deq).to(torch.float32)
    input_scale = float(tensors[f"{prefix}.input_scale"].to(torch.float32).reshape(-1)[0])
    input_offset = float(tensors[f"{prefix}.input_offset"].to(torch.float32).reshape(-1)[0])
    without_bias = -round(input_offset) * weight.to(torch.int64).sum(dim=1)
    if not torch.equal(tensors[f"{prefix}.quant_bias"].to(torch.int64).reshape(-1), without_bias):
        raise ValueError(f"{prefix}.quant_bias holds a folded float bias; roll back a layer without bias")
    return q * (deq.reshape(-1, 1) / input_scale)


def write_float_rollback(source: Path, target: Path, layers: list[str]) -> Path:
    """Roll the checkpoint layers ``layers`` (``model.layers.0.self_attn.q_proj``) of ``source`` to FLOAT.

    Each layer's quantized tensors and entries are dropped and its ``weight``
    becomes the float weight they represent (:func:`dequantized_int8_weight`),
    in the dtype of the checkpoint's float tensors (its ``lm_head``). Fused
    neighbours keep their quant type, which makes mixed fused layers.

    Raises:
        ValueError: a layer is not described as quantized in ``source``, or cannot be dequantized.
    """
    source, target = Path(source), Path(target)
    if (target / HANDMADE_MARKER).exists():
        return target
    description = load_description(source)
    entries = dict(description.entries)
    tensors = read_safetensors(source)
    dtype = tensors["lm_head.weight"].dtype
    for prefix in layers:
        if entries.get(f"{prefix}.weight") in (None, "FLOAT"):
            raise ValueError(f"{prefix} is not a quantized layer of {source}")
        weight = dequantized_int8_weight(prefix, tensors)
        for name in [n for n in tensors if n.startswith(f"{prefix}.") and n != f"{prefix}.bias"]:
            tensors.pop(name)
            entries.pop(name, None)
        tensors[f"{prefix}.weight"] = weight.to(dtype).contiguous()
        entries[f"{prefix}.weight"] = "FLOAT"
    raw = {**description.settings, **entries}
    note = (
        f"Hand-made from the tool-made checkpoint {source}.\n\nRolled back to FLOAT (the dequantized "
        f"weight, {dtype}): {', '.join(layers)}.\n"
    )
    return save_handmade_folder(source, target, tensors, raw, note)
