"""``vllm-modelslim inspect`` on small hand-written folders: input that once crashed it, and its exit codes.

Each folder is a ``config.json``, a description and one safetensors file of
zeros, written here (no msmodelslim run needed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tiny_qwen3_shapes import PROJECTION_SIZES, tiny_qwen3_config
from vllm_modelslim.cli import main
from vllm_modelslim.inspection import inspect_checkpoint

CONFIG = tiny_qwen3_config(1)
PROJECTIONS = PROJECTION_SIZES
WEIGHTS = "quant_model_weights-00001-of-00001.safetensors"
DESCRIPTION = "quant_model_description.json"


def w8a8_dynamic(prefix: str, n: int, k: int) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": torch.ones(n, k, dtype=torch.int8),
        f"{prefix}.weight_scale": torch.ones(n, 1),
        f"{prefix}.weight_offset": torch.zeros(n, 1),
    }


def dense_model() -> tuple[dict, dict[str, torch.Tensor]]:
    """(description, tensors) of a one-layer W8A8_DYNAMIC model."""
    tensors = {"model.embed_tokens.weight": torch.zeros(256, 64, dtype=torch.bfloat16)}
    description: dict = {"version": "1.0.0", "model.embed_tokens.weight": "FLOAT"}
    for name, (n, k) in PROJECTIONS.items():
        stored = w8a8_dynamic(f"model.layers.0.{name}", n, k)
        tensors.update(stored)
        description.update(dict.fromkeys(stored, "W8A8_DYNAMIC"))
    return description, tensors


def write_folder(folder: Path, config: dict, description: dict, tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / DESCRIPTION).write_text(json.dumps(description))
    save_file(tensors, str(folder / WEIGHTS))
    return folder


def run_cli(folder: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "vllm_modelslim.cli", "inspect", str(folder), *extra]
    env = os.environ | {"COLUMNS": "200"}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def test_the_clean_folder_is_clean(tmp_path, capsys):
    folder = write_folder(tmp_path / "m", CONFIG, *dense_model())
    assert inspect_checkpoint(folder).problems == []
    assert main(["inspect", str(folder)]) == 0
    assert "no problems found" in capsys.readouterr().out


def test_float_layer_with_quantized_tensors(tmp_path):
    description, tensors = dense_model()
    description.update(dict.fromkeys([k for k in description if ".mlp.down_proj." in k], "FLOAT"))
    report = inspect_checkpoint(write_folder(tmp_path / "m", CONFIG, description, tensors))
    (problem,) = report.problems
    assert problem.kind == "CheckpointTensorError" and problem.layer == "model.layers.0.mlp.down_proj"
    assert problem.file.endswith(WEIGHTS) and "FLOAT" in problem.message


def mixed_model() -> tuple[dict, dict[str, torch.Tensor]]:
    """``dense_model`` with a FLOAT q_proj (bf16 weight) next to the W8A8_DYNAMIC k_proj and v_proj."""
    description, tensors = dense_model()
    q = "model.layers.0.self_attn.q_proj"
    for suffix in ("weight", "weight_scale", "weight_offset"):
        description.pop(f"{q}.{suffix}"), tensors.pop(f"{q}.{suffix}")
    n, k = PROJECTIONS["self_attn.q_proj"]
    tensors[f"{q}.weight"] = torch.zeros(n, k, dtype=torch.bfloat16)
    description[f"{q}.weight"] = "FLOAT"
    return description, tensors


def test_a_mixed_fused_layer_is_reported_per_shard(tmp_path):
    report = inspect_checkpoint(write_folder(tmp_path / "m", CONFIG, *mixed_model()))
    assert report.problems == [] and report.values_checked
    (row,) = [r for r in report.layers if r.prefix == "model.layers.0.self_attn.qkv_proj"]
    assert row.quant_type == "FLOAT + W8A8_DYNAMIC + W8A8_DYNAMIC"
    assert row.scheme == "FLOAT + W8A8DynamicLinearScheme + W8A8DynamicLinearScheme"
    (q_n, k), (kv_n, _) = PROJECTIONS["self_attn.q_proj"], PROJECTIONS["self_attn.k_proj"]
    # bf16 q weight + int8 k/v weights with their f32 scales and offsets
    assert row.stored_bytes == 2 * q_n * k + 2 * (kv_n * k + 2 * 4 * kv_n)
    assert row.bf16_bytes == 2 * (q_n + 2 * kv_n) * k


def test_a_mixed_layer_shard_value_problem_names_the_shard(tmp_path):
    description, tensors = mixed_model()
    tensors["model.layers.0.self_attn.v_proj.weight_scale"][3] = float("nan")
    (problem,) = inspect_checkpoint(write_folder(tmp_path / "m", CONFIG, description, tensors)).problems
    assert problem.kind == "InvalidScaleError" and problem.layer == "model.layers.0.self_attn.v_proj"
    assert problem.file.endswith(WEIGHTS)


def test_entries_for_layers_the_model_does_not_have(tmp_path):
    description, tensors = dense_model()
    description["model.layers.99.mlp.down_proj.weight"] = "W8A8_DYNAMIC"
    report = inspect_checkpoint(write_folder(tmp_path / "m", CONFIG, description, tensors))
    (problem,) = report.problems
    assert problem.kind == "UnusedDescriptionEntryError" and problem.file.endswith(DESCRIPTION)
    assert "model.layers.99.mlp.down_proj.weight" in problem.message
    assert all("layers.99" not in row.prefix for row in report.layers)


@pytest.mark.parametrize("projections", [("gate_proj", "up_proj", "down_proj"), ("w1", "w3", "w2")])
def test_moe_of_a_model_type_outside_the_packed_module_table(tmp_path, projections):
    config = {**CONFIG, "model_type": "some_future_moe", "num_experts": 2, "moe_intermediate_size": 32}
    description, tensors = dense_model()
    for name in ("gate_proj", "up_proj", "down_proj"):
        for key in [k for k in tensors if f".mlp.{name}." in k]:
            del tensors[key], description[key]
    gate, up, down = projections
    for expert in range(2):
        for name, (n, k) in ((gate, (32, 64)), (up, (32, 64)), (down, (64, 32))):
            stored = w8a8_dynamic(f"model.layers.0.mlp.experts.{expert}.{name}", n, k)
            tensors.update(stored)
            description.update(dict.fromkeys(stored, "W8A8_DYNAMIC"))
    report = inspect_checkpoint(write_folder(tmp_path / "m", config, description, tensors))
    assert report.problems == [], [str(p) for p in report.problems]
    (moe,) = [row for row in report.layers if row.layer_type == "moe"]
    assert moe.experts == 2 and moe.scheme == "W8A8DynamicMoEScheme"
    assert moe.shards == tuple(f"model.layers.0.mlp.experts.0.{p}" for p in projections)


def test_rich_markup_in_names_and_values_is_printed_as_text(tmp_path):
    description, tensors = dense_model()
    odd = "model.layers.0.mlp.[bold]odd[/].weight"
    tensors[odd] = torch.zeros(4, 4, dtype=torch.bfloat16)  # stored, not described: a problem naming it
    description["metadata"] = {"note": "[/] and [red]"}
    description["model.layers.0.self_attn.[/]x.weight"] = "[bold]W9"
    folder = write_folder(tmp_path / "[bold]folder[/]", CONFIG, description, tensors)
    result = run_cli(folder)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "MarkupError" not in result.stderr
    assert odd in result.stdout and "[/] and [red]" in result.stdout and "[bold]folder[/]" in result.stdout
    assert "[bold]W9" in result.stdout


def test_exit_codes(tmp_path, monkeypatch, capsys):
    good = write_folder(tmp_path / "good", CONFIG, *dense_model())
    description, tensors = dense_model()
    description["model.layers.0.mlp.down_proj.weight"] = "W3A5"
    bad = write_folder(tmp_path / "bad", CONFIG, description, tensors)
    assert main(["inspect", str(good)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(bad), "--json"]) == 1
    (problem,) = json.loads(capsys.readouterr().out)["problems"]
    assert problem["kind"] == "UnknownQuantTypeError"
    assert main(["inspect"]) == 2  # usage error
    assert main(["inspect", "--help"]) == 0
    assert main(["no-such-command"]) == 2

    import vllm_modelslim.inspection as inspection

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in inspect")

    monkeypatch.setattr(inspection, "inspect_checkpoint", broken)
    capsys.readouterr()
    assert main(["inspect", str(good)]) == 2
    err = capsys.readouterr().err
    assert "RuntimeError: a bug in inspect" in err and "internal error" in err


def test_exit_codes_through_the_console_entry_point(tmp_path):
    good = write_folder(tmp_path / "good", CONFIG, *dense_model())
    description, tensors = dense_model()
    description["model.layers.0.self_attn.k_proj.weight"] = "W8A8"  # static W8A8 needs quant_bias etc.
    bad = write_folder(tmp_path / "bad", CONFIG, description, tensors)
    assert run_cli(good).returncode == 0
    result = run_cli(bad, "--json")
    assert result.returncode == 1
    (problem,) = json.loads(result.stdout)["problems"]
    assert (
        problem["kind"] == "CheckpointTensorError" and problem["layer"] == "model.layers.0.self_attn.k_proj"
    )
    assert run_cli(tmp_path / "good", "--no-such-flag").returncode == 2
