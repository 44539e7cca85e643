"""Broken copies of tool-made checkpoints fail to load in a real vLLM engine, with a clear error.

Every case starts from a good msmodelslim checkpoint, breaks one thing, and
checks that ``LLM(..., quantization="ascend")`` raises the plugin's specific
error (never a bare KeyError/AssertionError), that the message names the file
and the layer, and that nothing is written into the model folder.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vllm_modelslim.examples.vllm_runner import make_llm, reset_after_failed_start
from vllm_modelslim.format import (
    CheckpointTensorError,
    DescriptionFormatError,
    DescriptionNotFoundError,
    InvalidScaleError,
    LayerNotDescribedError,
    PackedShardMismatchError,
    UnknownQuantTypeError,
)

pytestmark = pytest.mark.engine

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
     LayerNotDescribedError, DESCRIPTION, f"{L1}.self_attn.qkv_proj"),
    ("unknown-quant-type", "w8a8_dynamic", edit_description(set_entry(f"{L0}.mlp.down_proj.weight", "W3A5")),
     UnknownQuantTypeError, DESCRIPTION, f"{L0}.mlp.down_proj"),
    ("packed-shards-disagree", "w8a8_dynamic",
     edit_description(set_entry(f"{L0}.self_attn.k_proj.weight", "W8A16")),
     PackedShardMismatchError, DESCRIPTION, f"{L0}.self_attn.qkv_proj"),
    ("packed-shard-float", "w8a8_dynamic", edit_description(set_entry(f"{L1}.mlp.up_proj.weight", "FLOAT")),
     PackedShardMismatchError, DESCRIPTION, f"{L1}.mlp.gate_up_proj"),
    ("quantized-embedding", "w8a8_dynamic",
     edit_description(set_entry("model.embed_tokens.weight", "W8A8_DYNAMIC")),
     UnknownQuantTypeError, DESCRIPTION, "model.embed_tokens"),
    ("quantized-lm-head", "w8a16", edit_description(set_entry("lm_head.weight", "W8A16")),
     UnknownQuantTypeError, DESCRIPTION, "lm_head"),
    ("c8-not-supported-yet", "w8a8_dynamic", edit_description(set_entry("kv_cache_type", "C8")),
     UnknownQuantTypeError, DESCRIPTION, None),
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
]  # fmt: skip


def load_error(folder: Path) -> Exception:
    """The exception ``LLM(...)`` raises, unwrapped from vLLM's config validation.

    Errors raised while vLLM validates its config (description problems) reach
    the caller inside a pydantic ValidationError whose text includes ours.
    """
    from pydantic import ValidationError

    try:
        make_llm(folder, "ascend", kv_cache_memory_bytes=32 * 2**20)
    except ValidationError as exc:
        original = exc.errors()[0].get("ctx", {}).get("error")
        assert isinstance(original, Exception), exc
        assert str(original) in str(exc)
        return original
    except Exception as exc:  # noqa: BLE001 - the test inspects whatever was raised
        return exc
    finally:
        reset_after_failed_start()
    raise AssertionError("the broken checkpoint loaded")


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


@pytest.mark.parametrize(
    "recipe, breakage, error, file_text, layer", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_broken_checkpoint_fails_at_load_with_a_clear_error(
    quantized, tmp_path, recipe, breakage, error, file_text, layer
):
    folder = tmp_path / recipe
    shutil.copytree(quantized(recipe), folder)
    breakage(folder)
    before = snapshot(folder)
    raised = load_error(folder)
    message = str(raised)
    print(f"\n{type(raised).__name__}: {message}")
    assert isinstance(raised, error), f"{type(raised).__name__}: {message}"
    assert file_text in message
    if layer is not None:
        assert layer in message
    assert snapshot(folder) == before, "loading must not write into the model folder"


def test_the_intact_copy_loads(quantized, tmp_path):
    # Control for the cases above: the same copy procedure without a breakage loads and generates.
    from vllm_modelslim.examples.vllm_runner import close_llm, greedy_generate

    folder = tmp_path / "intact"
    shutil.copytree(quantized("w8a8_dynamic"), folder)
    llm = make_llm(folder, "ascend", kv_cache_memory_bytes=32 * 2**20)
    assert len(greedy_generate(llm, [[1, 2, 3]], 4)[0].token_ids) == 4
    close_llm(llm)
