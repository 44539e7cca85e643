"""Quantized GLM-4.5 MoE (``glm4_moe``) checkpoints served by a real vLLM engine with quantization="ascend".

The model is the tiny GLM-4.5 MoE (``vllm_modelslim.examples.tiny_glm4_moe``:
4 decoder layers, the first dense, then 8 routed experts top-2 in 2 groups of
which 1 is picked, sigmoid scores with ``e_score_correction_bias``,
``routed_scaling_factor`` 2.5, one shared expert; q/k/v biases, half-rotary
heads; one MTP layer at index 4). Checkpoints are tool-made by the real
msmodelslim 26.1.0 (its ``glm4_moe`` adapter, transformers 4.57.6): every
linear W8A8_DYNAMIC, and routed experts W4A8_DYNAMIC per-channel with the rest
W8A8_DYNAMIC. msmodelslim quantizes the MTP layer too; vLLM's main model does
not build it, so its entries are accepted but never loaded.

Per case: each layer runs the expected method (routed experts the plugin's
MoE scheme, shared experts and the dense MLP its linear scheme, the router and
its correction bias float from the checkpoint, q/k/v with their float bias);
greedy generations match the pure-torch reference (transformers' own
GLM-4.5 forward in fp32 with the reference quantized linears and experts,
``vllm_modelslim.reference``) under the rules of ``test_schemes_e2e.py``;
teacher-forced top-1 agreement with the unquantized model stays above the
scheme's floor. Broken copies (an MTP tensor missing, a description for more
layers than the config's main and MTP layers) fail at load naming the file
and the layer.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from e2e_compare import (
    TOP1_FLOOR,
    Case,
    compare_with_reference,
    evaluation_sequences,
    prompt_sequences,
    reference_for,
    start_engine,
    top1_agreement,
)
from safetensors import safe_open
from test_bad_checkpoints import load_error

import glm4_moe_breakages
from model_folders import layer_count
from vllm_modelslim.examples.vllm_runner import close_llm

pytestmark = pytest.mark.engine

CASES = [
    Case("glm4_moe_w8a8_dynamic", "W8A8_DYNAMIC", "float32"),
    Case("glm4_moe_w4a8_dynamic", "W4A8_DYNAMIC", "float32"),
]


@pytest.fixture(scope="module", params=CASES, ids=[c.id for c in CASES])
def engine(request, glm4_moe_checkpoint, tmp_path_factory):
    case: Case = request.param
    folder = glm4_moe_checkpoint(case.recipe)
    llm = start_engine(case, folder, tmp_path_factory)
    yield case, folder, llm
    close_llm(llm)


def checkpoint_tensors(folder, names: list[str]) -> dict[str, torch.Tensor]:
    found = {}
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), "pt") as handle:
            found.update({n: handle.get_tensor(n) for n in names if n in handle.keys()})  # noqa: SIM118
    return found


def describe_glm_layers(model: torch.nn.Module) -> dict[str, dict]:
    """Per layer of interest: its quant method, scheme quant type and (router) float tensors."""
    from vllm.model_executor.layers.fused_moe import RoutedExperts

    table = {}
    for name, module in model.named_modules():
        method = getattr(module, "quant_method", None)
        scheme = getattr(method, "scheme", None)
        row = {"method": type(method).__name__, "quant_type": getattr(scheme, "quant_type", None)}
        if isinstance(module, RoutedExperts):
            row["experts"] = module.modelslim_local_experts
            table[module.layer_name] = row
        elif name.endswith((".mlp.gate", "_proj")) and not name.endswith(".attn"):
            row["weight_dtype"] = str(module.weight.dtype) if hasattr(module, "weight") else None
            if name.endswith(".mlp.gate"):
                row["e_score_correction_bias"] = module.e_score_correction_bias.detach().clone()
            if getattr(module, "bias", None) is not None:
                row["bias"] = module.bias.detach().clone()
            table[name] = row
    return table


def test_every_layer_runs_its_method(engine, glm4_moe_model):
    case, folder, llm = engine
    (table,) = llm.apply_model(describe_glm_layers)
    config = json.loads((folder / "config.json").read_text())
    layers, dense = config["num_hidden_layers"], config["first_k_dense_replace"]
    moe_layers = range(dense, layers)
    assert sorted(k for k in table if k.endswith(".experts")) == [
        f"model.layers.{i}.mlp.experts" for i in moe_layers
    ]
    assert not any(k.startswith(f"model.layers.{layers}.") for k in table), "vLLM built the MTP layer"
    source = checkpoint_tensors(
        glm4_moe_model, [f"model.layers.{i}.mlp.gate.e_score_correction_bias" for i in moe_layers]
    )
    for i in moe_layers:
        prefix = f"model.layers.{i}.mlp"
        experts = table[f"{prefix}.experts"]
        assert (experts["method"], experts["quant_type"], experts["experts"]) == (
            "ModelSlimFusedMoEMethod", case.quant_type, 8,
        )  # fmt: skip
        for proj in ("gate_up_proj", "down_proj"):
            shared = table[f"{prefix}.shared_experts.{proj}"]
            assert (shared["method"], shared["quant_type"]) == ("ModelSlimLinearMethod", "W8A8_DYNAMIC")
        gate = table[f"{prefix}.gate"]
        assert gate["method"] == "UnquantizedLinearMethod" and gate["weight_dtype"] == "torch.float32"
        # msmodelslim keeps the correction bias only as a parameter (examples/msmodelslim_site); vLLM
        # leaves an unloaded one uninitialised, so it must equal the source model's.
        bias = source[f"{prefix}.gate.e_score_correction_bias"]
        torch.testing.assert_close(gate["e_score_correction_bias"], bias.float(), rtol=0, atol=0)
    for i in range(dense):
        for proj in ("gate_up_proj", "down_proj"):
            row = table[f"model.layers.{i}.mlp.{proj}"]
            assert (row["method"], row["quant_type"]) == ("ModelSlimLinearMethod", "W8A8_DYNAMIC")
    for i in range(layers):
        qkv = table[f"model.layers.{i}.self_attn.qkv_proj"]
        assert (qkv["method"], qkv["quant_type"]) == ("ModelSlimLinearMethod", "W8A8_DYNAMIC")
        names = [f"model.layers.{i}.self_attn.{p}_proj.bias" for p in "qkv"]
        stored = checkpoint_tensors(folder, names)
        torch.testing.assert_close(qkv["bias"], torch.cat([stored[n] for n in names]).float(), rtol=0, atol=0)


def test_greedy_tokens_match_reference(engine):
    case, folder, llm = engine
    reference = reference_for(folder)
    layers = layer_count(folder)
    assert set(reference.expert_layers) == {f"model.layers.{i}.mlp.experts" for i in range(1, layers)}
    assert reference.mtp_tensors and all(
        k.startswith(f"model.layers.{layers}.") for k in reference.mtp_tensors
    )
    compare_with_reference(llm, reference, prompt_sequences(folder), case.dtype, case.quant_type, case.id)


def test_top1_agreement_with_unquantized_model(engine, glm4_moe_model):
    case, _, llm = engine
    share = top1_agreement(llm, reference_for(glm4_moe_model), evaluation_sequences(glm4_moe_model))
    print(f"\n{case.id}: top-1 agreement with the unquantized GLM-4.5 MoE model {share:.1%}")
    assert share >= TOP1_FLOOR.get(case.quant_type, TOP1_FLOOR["default"])


@pytest.mark.parametrize(**glm4_moe_breakages.case_params())
def test_broken_mtp_layer_fails_at_load(glm4_moe_checkpoint, tmp_path, breakage, error, text, layer):
    folder = tmp_path / "broken"
    shutil.copytree(glm4_moe_checkpoint(glm4_moe_breakages.RECIPE), folder)
    breakage(folder)
    exc = load_error(folder)
    print(f"\n{type(exc).__name__}: {exc}")
    assert isinstance(exc, error), exc
    assert str(folder) in str(exc) and text in str(exc) and layer in str(exc)
