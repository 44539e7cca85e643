"""Ways a user's checkpoint folder can be broken, applied to copies of tool-made checkpoints.

Shared by the loader tests (``tests/engine/test_bad_checkpoints.py``: a real
vLLM engine must refuse each copy with the plugin's error) and the inspect
tests (``tests/tooling/test_inspect_command.py``: ``vllm-modelslim inspect``
must report the same error without building a model). Each case is
``(id, recipe, breakage, error type, text the message must contain (file), layer or None)``.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vllm_modelslim.format import (
    CheckpointTensorError,
    DescriptionFormatError,
    DescriptionNotFoundError,
    InvalidScaleError,
    LayerNotDescribedError,
    PackedShardMismatchError,
    UnknownQuantTypeError,
    UnusedDescriptionEntryError,
)

DESCRIPTION = "quant_model_description.json"


def edit_description(edit: Callable[[dict], dict | list | str]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        path = folder / DESCRIPTION
        result = edit(json.loads(path.read_text()))
        path.write_text(result if isinstance(result, str) else json.dumps(result))

    return apply


def edit_tensors(edit: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        for path in folder.glob("*.safetensors"):
            tensors = load_file(str(path))
            edit(tensors)
            save_file(tensors, str(path), metadata={"format": "pt"})

    return apply


def set_entry(key: str, value: str):
    def edit(d: dict) -> dict:
        d[key] = value
        return d

    return edit


def drop_tensors(prefix: str):
    def edit(t: dict[str, torch.Tensor]) -> None:
        for name in [n for n in t if n.startswith(prefix)]:
            del t[name]

    return edit


def edit_config(key: str, value) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        path = folder / "config.json"
        config = json.loads(path.read_text())
        config[key] = value
        path.write_text(json.dumps(config))

    return apply


def drop_entries(prefix: str):
    return lambda d: {k: v for k, v in d.items() if not k.startswith(prefix)}


def set_value(name: str, value: float, index: int = 0):
    def edit(t: dict[str, torch.Tensor]) -> None:
        if name in t:
            t[name].view(-1)[index] = value

    return edit


def replace_tensor(name: str, make: Callable[[torch.Tensor], torch.Tensor | None]):
    def edit(t: dict[str, torch.Tensor]) -> None:
        if name in t:
            new = make(t[name])
            if new is None:
                del t[name]
            else:
                t[name] = new

    return edit


def edit_description_text(edit: Callable[[str], str | bytes]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        path = folder / DESCRIPTION
        result = edit(path.read_text())
        if isinstance(result, bytes):
            path.write_bytes(result)
        else:
            path.write_text(result)

    return apply


def duplicate_first_entry(text: str) -> str:
    entries = json.loads(text)
    key, value = next((k, v) for k, v in entries.items() if "." in k)
    return text.replace("{", "{" + json.dumps(key) + ": " + json.dumps(value) + ", ", 1)


def deeply_nested(text: str, depth: int = 100_000) -> str:
    return text.replace("{", '{"metadata": ' + "[" * depth + "]" * depth + ", ", 1)


def huge_key(name: str, length: int = 1_000_000) -> Callable[[dict], dict]:
    def edit(d: dict) -> dict:
        d[name + "x" * length] = d.pop(name)
        return d

    return edit


def grow_description_sparse(size: int) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        os.truncate(folder / DESCRIPTION, size)  # a sparse file: no disk space used

    return apply


def edit_weight_file(edit: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        for path in folder.glob("*.safetensors"):
            path.write_bytes(edit(path.read_bytes()))

    return apply


def add_stale_weight_file(name: str) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        source = next(folder.glob("*.safetensors"))
        save_file({name: load_file(str(source))[name]}, str(folder / "stale-00001-of-00001.safetensors"))

    return apply


PICKLE_MARKER = "PICKLE_WAS_UNPICKLED"


class _BoobyTrap:
    """Unpickling this creates ``PICKLE_MARKER`` next to the model folder."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def plant_pickle(folder: Path) -> Path:
    """Write a ``pytorch_model.bin`` whose unpickling leaves a marker file; returns the marker's path."""
    marker = folder.parent / PICKLE_MARKER
    with open(folder / "pytorch_model.bin", "wb") as handle:
        pickle.dump(_BoobyTrap(marker), handle)
    return marker


def mark_float(prefix: str) -> Callable[[dict], dict]:
    """Description edit: every entry of layer ``prefix`` says FLOAT."""
    return lambda d: {k: "FLOAT" if k.startswith(prefix + ".") else v for k, v in d.items()}


def float_weight_keeping_scales(prefix: str) -> Callable[[Path], None]:
    """A FLOAT description and a bf16 weight for ``prefix``, but its scales and offsets still stored."""

    def apply(folder: Path) -> None:
        edit_description(mark_float(prefix))(folder)
        edit_tensors(replace_tensor(f"{prefix}.weight", lambda t: t.to(torch.bfloat16)))(folder)

    return apply


def only_pickled_weights(folder: Path) -> None:
    for path in folder.glob("*.safetensors"):
        path.unlink()


L0 = "model.layers.0"
L1 = "model.layers.1"
E1 = "model.layers.1.mlp.experts"  # the tiny Qwen3-MoE's second MoE layer
WEIGHTS = "quant_model_weights-00001-of-00001.safetensors"

# (id, recipe, breakage, error type, text the message must contain (file), layer or None)
CASES = [
    ("description-missing", "w8a8_dynamic", lambda f: (f / DESCRIPTION).unlink(),
     DescriptionNotFoundError, "config.json", None),
    ("description-not-json", "w8a8_dynamic", edit_description(lambda d: "{oops"),
     DescriptionFormatError, DESCRIPTION, None),
    ("description-not-object", "w8a8_dynamic", edit_description(lambda d: list(d)),
     DescriptionFormatError, DESCRIPTION, None),
    ("layer-absent", "w8a8_dynamic", edit_description(drop_entries(f"{L1}.self_attn.o_proj")),
     LayerNotDescribedError, DESCRIPTION, f"{L1}.self_attn.o_proj"),
    ("description-for-another-model", "w8a8_dynamic",
     edit_description(lambda d: {k.replace("layers.1.", "layers.7."): v for k, v in d.items()}),
     UnusedDescriptionEntryError, DESCRIPTION, "model.layers.7.self_attn.q_proj.weight"),
    ("description-layer-beyond-model", "w8a8_dynamic",
     edit_description(set_entry("model.layers.99.mlp.down_proj.weight", "W8A8_DYNAMIC")),
     UnusedDescriptionEntryError, DESCRIPTION, "model.layers.99.mlp.down_proj.weight"),
    ("float-layer-stores-int8", "w8a8_dynamic", edit_description(mark_float(f"{L0}.mlp.down_proj")),
     CheckpointTensorError, WEIGHTS, f"{L0}.mlp.down_proj"),
    ("float-layer-stores-scales", "w8a16", float_weight_keeping_scales(f"{L1}.self_attn.o_proj"),
     CheckpointTensorError, WEIGHTS, f"{L1}.self_attn.o_proj"),
    ("unknown-quant-type", "w8a8_dynamic", edit_description(set_entry(f"{L0}.mlp.down_proj.weight", "W3A5")),
     UnknownQuantTypeError, DESCRIPTION, f"{L0}.mlp.down_proj"),
    # Fused shards of different types load as a mixed layer; each shard's tensors must fit its own type.
    ("mixed-shard-tensors-missing", "w8a8_dynamic",
     edit_description(set_entry(f"{L0}.self_attn.k_proj.weight", "W8A8")),
     CheckpointTensorError, "w8a8_dynamic", f"{L0}.self_attn.k_proj"),
    ("mixed-float-shard-stores-int8", "w8a8_dynamic",
     edit_description(set_entry(f"{L1}.mlp.up_proj.weight", "FLOAT")),
     CheckpointTensorError, WEIGHTS, f"{L1}.mlp.up_proj"),
    ("quantized-embedding", "w8a8_dynamic",
     edit_description(set_entry("model.embed_tokens.weight", "W8A8_DYNAMIC")),
     UnknownQuantTypeError, DESCRIPTION, "model.embed_tokens"),
    ("quantized-lm-head", "w8a16", edit_description(set_entry("lm_head.weight", "W8A16")),
     UnknownQuantTypeError, DESCRIPTION, "lm_head"),
    ("c8-without-scales", "w8a8_dynamic", edit_description(set_entry("kv_cache_type", "C8")),
     DescriptionFormatError, DESCRIPTION, None),
    ("c8-unknown-cache-type", "w8a8c8_asym", edit_description(set_entry("kv_cache_type", "C4")),
     UnknownQuantTypeError, DESCRIPTION, None),
    ("c8-scales-without-cache-type", "w8a8c8_asym",
     edit_description(lambda d: {k: v for k, v in d.items() if k not in ("kv_cache_type", "kv_quant_type")}),
     UnknownQuantTypeError, DESCRIPTION, None),
    ("c8-scale-wrong-size", "w8a8c8_asym",
     edit_tensors(replace_tensor(f"{L1}.self_attn.v_proj.kv_cache_scale", lambda t: t[:100].clone())),
     CheckpointTensorError, WEIGHTS, f"{L1}.self_attn"),
    ("c8-scale-missing", "w8a8c8_asym",
     edit_tensors(replace_tensor(f"{L0}.self_attn.k_proj.kv_cache_scale", lambda t: None)),
     CheckpointTensorError, "w8a8c8_asym", f"{L0}.self_attn"),
    ("c8-offset-not-described", "w8a8c8_asym",
     edit_description(drop_entries(f"{L1}.self_attn.k_proj.kv_cache_offset")),
     CheckpointTensorError, DESCRIPTION, f"{L1}.self_attn"),
    ("c8-scale-zero", "w8a8c8_asym", edit_tensors(set_value(f"{L0}.self_attn.v_proj.kv_cache_scale", 0.0, 5)),
     InvalidScaleError, WEIGHTS, f"{L0}.self_attn"),
    ("c8-scale-nan", "w8a8c8_asym",
     edit_tensors(set_value(f"{L1}.self_attn.k_proj.kv_cache_scale", math.nan, 7)),
     InvalidScaleError, WEIGHTS, f"{L1}.self_attn"),
    ("c8-offset-not-integer", "w8a8c8_asym",
     edit_tensors(set_value(f"{L0}.self_attn.k_proj.kv_cache_offset", 0.5, 3)),
     InvalidScaleError, WEIGHTS, f"{L0}.self_attn"),
    ("scale-wrong-shape", "w8a8_dynamic",
     edit_tensors(replace_tensor(f"{L0}.mlp.down_proj.weight_scale", lambda t: t[:-1].clone())),
     CheckpointTensorError, WEIGHTS, f"{L0}.mlp.down_proj"),
    ("weight-wrong-dtype", "w8a8_dynamic",
     edit_tensors(replace_tensor(f"{L0}.mlp.gate_proj.weight", lambda t: t.to(torch.float16))),
     CheckpointTensorError, WEIGHTS, f"{L0}.mlp.gate_up_proj"),
    ("weight-transposed", "w8a16",
     edit_tensors(replace_tensor(f"{L1}.mlp.down_proj.weight", lambda t: t.T.contiguous())),
     CheckpointTensorError, WEIGHTS, f"{L1}.mlp.down_proj"),
    ("scale-missing", "w8a8_dynamic",
     edit_tensors(replace_tensor(f"{L1}.mlp.up_proj.weight_scale", lambda t: None)),
     CheckpointTensorError, "w8a8_dynamic", f"{L1}.mlp.gate_up_proj"),
    ("quant-bias-wrong-dtype", "w8a8_static",
     edit_tensors(replace_tensor(f"{L0}.self_attn.o_proj.quant_bias", lambda t: t.float())),
     CheckpointTensorError, WEIGHTS, f"{L0}.self_attn.o_proj"),
    *[
        (f"weight-scale-{name}", "w8a8_dynamic",
         edit_tensors(set_value(f"{L0}.self_attn.k_proj.weight_scale", value, 3)),
         InvalidScaleError, WEIGHTS, f"{L0}.self_attn.qkv_proj")
        for name, value in (("zero", 0.0), ("negative", -0.01), ("nan", math.nan), ("inf", math.inf))
    ],
    ("w8a16-scale-zero", "w8a16", edit_tensors(set_value(f"{L1}.mlp.down_proj.weight_scale", 0.0)),
     InvalidScaleError, WEIGHTS, f"{L1}.mlp.down_proj"),
    ("w8a16-offset-nan", "w8a16_asym", edit_tensors(set_value(f"{L1}.mlp.down_proj.weight_offset", math.nan)),
     InvalidScaleError, WEIGHTS, f"{L1}.mlp.down_proj"),
    ("deq-scale-negative", "w8a8_static", edit_tensors(set_value(f"{L1}.mlp.down_proj.deq_scale", -1e-4, 7)),
     InvalidScaleError, WEIGHTS, f"{L1}.mlp.down_proj"),
    ("input-scale-inf", "w8a8_static", edit_tensors(set_value(f"{L0}.mlp.gate_proj.input_scale", math.inf)),
     InvalidScaleError, WEIGHTS, f"{L0}.mlp.gate_up_proj"),
    ("input-offset-not-integer", "w8a8_static",
     edit_tensors(set_value(f"{L0}.self_attn.o_proj.input_offset", 2.5)),
     InvalidScaleError, WEIGHTS, f"{L0}.self_attn.o_proj"),
    ("dynamic-asymmetric-weights", "w8a8_dynamic",
     edit_tensors(set_value(f"{L0}.mlp.down_proj.weight_offset", 3.0)),
     InvalidScaleError, WEIGHTS, f"{L0}.mlp.down_proj"),
    # int4 schemes, FlatQuant, norm biases (issue 4)
    ("flatquant-transform-sizes-not-k", "w4a4_flatquant",
     edit_tensors(lambda t: t.update({f"{L0}.self_attn.{p}_proj.left_trans": torch.eye(8) for p in "qkv"})),
     CheckpointTensorError, WEIGHTS, f"{L0}.self_attn.qkv_proj"),
    ("flatquant-clip-ratio-zero", "w4a4_flatquant",
     edit_tensors(set_value(f"{L1}.mlp.down_proj.clip_ratio", 0.0)),
     InvalidScaleError, WEIGHTS, f"{L1}.mlp.down_proj"),
    ("flatquant-clip-ratio-above-one", "w4a4_flatquant",
     edit_tensors(set_value(f"{L1}.mlp.down_proj.clip_ratio", 1.5)),
     InvalidScaleError, WEIGHTS, f"{L1}.mlp.down_proj"),
    ("flatquant-transform-nan", "w4a4_flatquant",
     edit_tensors(set_value(f"{L1}.self_attn.o_proj.left_trans", math.nan)),
     InvalidScaleError, WEIGHTS, f"{L1}.self_attn.o_proj"),
    ("w4a16-groups-do-not-divide-k", "w4a16",
     edit_tensors(replace_tensor(f"{L0}.self_attn.o_proj.weight_scale", lambda t: t[:, :3].clone())),
     CheckpointTensorError, "quant_model_weight_w4a16", f"{L0}.self_attn.o_proj"),
    ("w4a16-scale-negative", "w4a16_asym",
     edit_tensors(set_value(f"{L0}.mlp.up_proj.weight_scale", -0.5)),
     InvalidScaleError, "quant_model_weight_w4a16", f"{L0}.mlp.gate_up_proj"),
    ("w4a16-packed-rows-wrong", "w4a16",
     edit_tensors(replace_tensor(f"{L1}.mlp.down_proj.weight", lambda t: torch.cat([t, t]))),
     CheckpointTensorError, "quant_model_weight_w4a16", f"{L1}.mlp.down_proj"),
    ("w4a4-weight-not-int4", "w4a4_dynamic",
     edit_tensors(set_value(f"{L0}.mlp.down_proj.weight", 100)),
     CheckpointTensorError, WEIGHTS, f"{L0}.mlp.down_proj"),
    ("w4a8-second-scale-inf", "w4a8_dynamic_pergroup",
     edit_tensors(set_value(f"{L0}.self_attn.q_proj.weight_scale_second", math.inf)),
     InvalidScaleError, "quant_model_weight_w4a8_dynamic", f"{L0}.self_attn.qkv_proj"),
    # MoE experts (tiny Qwen3-MoE)
    ("moe-expert-tensors-missing", "moe_w8a8_dynamic", edit_tensors(drop_tensors(f"{E1}.6.")),
     CheckpointTensorError, "moe_w8a8_dynamic", f"{E1} (expert 6, w13)"),
    ("moe-expert-not-described", "moe_w8a8_dynamic", edit_description(drop_entries(f"{E1}.4.")),
     LayerNotDescribedError, DESCRIPTION, E1),
    ("moe-expert-other-quant-type", "moe_w8a8_dynamic",
     edit_description(set_entry(f"{E1}.3.down_proj.weight", "W8A16")),
     PackedShardMismatchError, DESCRIPTION, E1),
    ("moe-experts-without-moe-scheme", "moe_w8a8_dynamic",
     edit_description(lambda d: {k: "W4A4_DYNAMIC" if ".experts." in k else v for k, v in d.items()}),
     UnknownQuantTypeError, DESCRIPTION, f"{L0}.mlp.experts"),
    ("moe-expert-scale-nan", "moe_w8a8_dynamic",
     edit_tensors(set_value(f"{E1}.5.up_proj.weight_scale", math.nan)),
     InvalidScaleError, WEIGHTS, f"{E1}.5.w13"),
    ("moe-group-size-does-not-divide", "moe_w4a16",
     edit_tensors(replace_tensor(f"{E1}.0.down_proj.weight_scale", lambda t: t[:, :5].clone())),
     CheckpointTensorError, "quant_model_weight", f"{E1}.0.w2"),
    ("moe-expert-group-count-differs", "moe_w4a16",
     edit_tensors(replace_tensor(f"{E1}.2.down_proj.weight_scale", lambda t: t[:, :6].clone())),
     CheckpointTensorError, "quant_model_weight", f"{E1} (expert 2, w2)"),
    ("moe-int4-pairs-do-not-divide", "moe_w4a8_dynamic", edit_config("moe_intermediate_size", 767),
     CheckpointTensorError, "pack factor 2", f"{L0}.mlp.experts"),
    ("norm-bias-wrong-size", "w8a8_static_m4",
     edit_tensors(replace_tensor(f"{L0}.input_layernorm.bias", lambda t: t[:-2].clone())),
     CheckpointTensorError, "quant_model_weight_w8a8", f"{L0}.input_layernorm"),
    # files a user may hand us: truncated/garbled/duplicated weights, pickles, hostile JSON (issue 7)
    ("safetensors-truncated", "w8a8_dynamic", edit_weight_file(lambda b: b[:-1000]),
     CheckpointTensorError, WEIGHTS, None),
    ("safetensors-header-garbage", "w8a8_dynamic", edit_weight_file(lambda b: b"\xff" * 8 + b[8:]),
     CheckpointTensorError, WEIGHTS, None),
    ("tensor-stored-twice", "w8a8_dynamic", add_stale_weight_file(f"{L0}.mlp.down_proj.weight_scale"),
     CheckpointTensorError, "stale-00001-of-00001", None),
    ("weights-only-in-pickle", "w8a8_dynamic", only_pickled_weights,
     CheckpointTensorError, "no *.safetensors", f"{L0}.self_attn.qkv_proj"),
    ("description-duplicate-key", "w8a8_dynamic", edit_description_text(duplicate_first_entry),
     DescriptionFormatError, DESCRIPTION, None),
    ("description-deeply-nested", "w8a8_dynamic", edit_description_text(deeply_nested),
     DescriptionFormatError, DESCRIPTION, None),
    ("description-huge-key", "w8a8_dynamic", edit_description(huge_key(f"{L0}.mlp.down_proj.weight")),
     DescriptionFormatError, DESCRIPTION, None),
    ("description-too-large", "w8a8_dynamic", grow_description_sparse(300 * 2**20),
     DescriptionFormatError, DESCRIPTION, None),
    ("description-not-utf8", "w8a8_dynamic", edit_description_text(lambda t: b"\xff\xfe" + t.encode()),
     DescriptionFormatError, DESCRIPTION, None),
    ("description-entry-not-a-string", "w8a8_dynamic",
     edit_description(lambda d: d | {f"{L0}.mlp.up_proj.weight": 8}),
     DescriptionFormatError, DESCRIPTION, None),
]  # fmt: skip


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Name → (size, mtime) of every file in ``folder`` (to prove nothing was written)."""
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def broken_copy(source: Path, folder: Path, breakage: Callable[[Path], None]) -> Path:
    """Copy ``source`` to ``folder``, plant a booby-trapped pickle, apply ``breakage``.

    Returns the path of the marker the pickle would create if it were ever unpickled.
    """
    shutil.copytree(source, folder)
    marker = plant_pickle(folder)
    breakage(folder)
    return marker


def case_params() -> dict:
    """``pytest.mark.parametrize`` arguments over :data:`CASES`."""
    return {
        "argnames": "recipe, breakage, error, file_text, layer",
        "argvalues": [c[1:] for c in CASES],
        "ids": [c[0] for c in CASES],
    }
