"""``vllm-modelslim inspect``: tool-made checkpoints inspect clean, broken copies report the loader's error.

The broken copies are the same catalogue the engine tests load
(``tests/breakages.py``): for each, inspect must report a problem of the error
type the loader raises, naming the same file and layer, exit with 1, write
nothing into the folder and unpickle nothing, without building a model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from breakages import CASES, broken_copy, case_params, snapshot
from model_folders import layer_count
from vllm_modelslim.inspection import inspect_checkpoint

# Needs the weights themselves (inspect reads headers and scale/offset values only).
WEIGHT_VALUE_CASES = {"w4a4-weight-not-int4"}

RECIPES = {
    # recipe: (quant types expected among the layers, bounds of quantized bytes / BF16 bytes)
    "w8a8_dynamic": ({"W8A8_DYNAMIC"}, (0.50, 0.55)),
    "w8a8_static_m4": ({"W8A8"}, (0.50, 0.55)),
    "w8a8_mix": ({"W8A8_MIX"}, (0.50, 0.55)),
    "w8a16_asym": ({"W8A16"}, (0.50, 0.55)),
    "w4a16": ({"W4A16"}, (0.25, 0.33)),
    "w4a8_dynamic": ({"W4A8_DYNAMIC"}, (0.25, 0.30)),
    "w4a8_dynamic_pergroup": ({"W4A8_DYNAMIC"}, (0.30, 0.40)),
    "w4a4_flatquant": ({"W4A4_FLATQUANT_DYNAMIC"}, (0.50, 0.55)),
    "moe_w8a8_dynamic": ({"W8A8_DYNAMIC"}, (0.50, 0.55)),
    "moe_w4a8_dynamic": ({"W4A8_DYNAMIC", "W8A8_DYNAMIC"}, (0.25, 0.30)),
    "moe_w4a16": ({"W4A16"}, (0.28, 0.33)),
}


def run_inspect(folder: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "vllm_modelslim.cli", "inspect", str(folder), *extra]
    env = os.environ | {"COLUMNS": "200"}  # rich wraps tables to the terminal width
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def safetensors_bytes(folder: Path) -> int:
    """Data bytes of the folder's safetensors files (file size minus the 8-byte length and the header)."""
    total = 0
    for path in folder.glob("*.safetensors"):
        with open(path, "rb") as handle:
            header = int.from_bytes(handle.read(8), "little")
        total += path.stat().st_size - 8 - header
    return total


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_tool_made_checkpoint_inspects_clean(quantized, recipe):
    folder = quantized(recipe)
    report = inspect_checkpoint(folder)
    assert report.problems == [], [str(p) for p in report.problems]
    assert report.format == "modelslim" and report.values_checked
    assert report.model_type == ("qwen3_moe" if recipe.startswith("moe_") else "qwen3")
    expected_types, (low, high) = RECIPES[recipe]
    quantized_types = {row.quant_type for row in report.layers} - {"FLOAT"}
    assert quantized_types == expected_types
    assert report.stored_bytes == safetensors_bytes(folder)
    stored, bf16 = report.quantized_layer_bytes()
    print(f"\n{recipe}: quantized layers {stored} B vs BF16 {bf16} B = {stored / bf16:.3f}")
    assert low <= stored / bf16 <= high
    if recipe.startswith("moe_"):
        (moe,) = {row.experts for row in report.layers if row.layer_type == "moe"}
        assert moe == 8


def test_cli_tables_and_json(quantized):
    folder = quantized("moe_w4a8_dynamic")
    tables = run_inspect(folder)
    assert tables.returncode == 0, tables.stderr[-2000:]
    for text in ("model.layers.*.mlp.experts", "W4A8_DYNAMIC", "W4A8DynamicMoEScheme", "no problems found"):
        assert text in tables.stdout
    result = run_inspect(folder, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(result.stdout)
    assert data["loadable"] and data["format"] == "modelslim" and data["model_type"] == "qwen3_moe"
    patterns = {(g["pattern"], g["quant_type"]): g for g in data["layer_patterns"]}
    layers = layer_count(folder)
    assert patterns[("model.layers.*.mlp.experts", "W4A8_DYNAMIC")]["indices"] == f"0-{layers - 1}"
    assert patterns[("model.layers.*.self_attn.qkv_proj", "W8A8_DYNAMIC")]["count"] == layers
    assert data["bytes_by_dtype"]["I8"] > 0 and data["stored_bytes"] == sum(data["bytes_by_dtype"].values())
    assert 0.25 < data["quantized_layers"]["ratio_to_bf16"] < 0.30


@pytest.mark.parametrize(**case_params())
def test_broken_copy_reports_the_loaders_error(
    quantized, tmp_path, recipe, breakage, error, file_text, layer
):
    case_id = next(c[0] for c in CASES if c[1:] == (recipe, breakage, error, file_text, layer))
    if case_id in WEIGHT_VALUE_CASES:
        pytest.skip("only visible in the weight values, which inspect does not read")
    folder = tmp_path / recipe
    marker = broken_copy(quantized(recipe), folder, breakage)
    before = snapshot(folder)
    report = inspect_checkpoint(folder)
    problems = [str(p) for p in report.problems]
    print("\n" + "\n".join(problems))
    assert not report.loadable
    matching = [
        p
        for p in report.problems
        if p.kind == error.__name__ and file_text in str(p) and (layer is None or layer in str(p))
    ]
    assert matching, f"no {error.__name__} naming {file_text!r} and {layer!r} among {problems}"
    assert snapshot(folder) == before
    assert not marker.exists(), "a pickle was unpickled"


def test_cli_exit_code_and_all_problems_at_once(quantized, tmp_path):
    # Two independent breakages in one folder: the loader stops at the first, inspect lists both.
    folder = tmp_path / "two-problems"
    shutil.copytree(quantized("w8a8_dynamic"), folder)
    path = folder / "quant_model_description.json"
    description = json.loads(path.read_text())
    description["model.layers.0.mlp.down_proj.weight"] = "W3A5"
    description["model.layers.1.self_attn.k_proj.weight"] = "FLOAT"  # a FLOAT shard storing int8
    path.write_text(json.dumps(description))
    result = run_inspect(folder, "--json")
    assert result.returncode == 1, result.stderr[-2000:]
    kinds = {(p["kind"], p["layer"]) for p in json.loads(result.stdout)["problems"]}
    assert ("UnknownQuantTypeError", "model.layers.0.mlp.down_proj") in kinds
    assert ("CheckpointTensorError", "model.layers.1.self_attn.k_proj") in kinds
    tables = run_inspect(folder)
    assert tables.returncode == 1 and "2 problem(s)" in tables.stdout


def test_missing_folder_is_a_problem_not_a_crash(tmp_path):
    result = run_inspect(tmp_path / "nope", "--json")
    assert result.returncode == 1
    (problem,) = json.loads(result.stdout)["problems"]
    assert problem["kind"] == "DescriptionNotFoundError"


def test_compressed_tensors_folder_is_summarised_from_its_config(tmp_path):
    # Hand-made: an LLM-Compressor-style config.json and one int8 weight with its scale.
    import torch
    from safetensors.torch import save_file

    config = {
        "model_type": "qwen3",
        "quantization_config": {
            "quant_method": "compressed-tensors",
            "format": "int-quantized",
            "ignore": ["lm_head"],
            "config_groups": {
                "group_0": {
                    "targets": ["Linear"],
                    "weights": {"num_bits": 8, "type": "int", "strategy": "channel", "symmetric": True},
                    "input_activations": {"num_bits": 8, "strategy": "token", "dynamic": True},
                }
            },
        },
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(
        {
            "model.layers.0.mlp.down_proj.weight": torch.zeros(64, 128, dtype=torch.int8),
            "model.layers.0.mlp.down_proj.weight_scale": torch.ones(64, 1, dtype=torch.bfloat16),
        },
        str(tmp_path / "model.safetensors"),
    )
    result = run_inspect(tmp_path, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(result.stdout)
    assert data["format"] == "compressed-tensors" and data["description_file"] is None
    group = data["settings"]["config_groups"]["group_0"]
    assert group["weights"]["strategy"] == "channel" and group["input_activations"]["dynamic"] is True
    assert data["bytes_by_dtype"] == {"I8": 64 * 128, "BF16": 64 * 2}
