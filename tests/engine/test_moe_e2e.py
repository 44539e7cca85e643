"""Quantized Qwen3-MoE checkpoints served by a real vLLM engine with quantization="ascend".

The model is the tiny Qwen3-MoE (8 experts, top-2, upcycled from the demo
model, ``vllm_modelslim.examples.tiny_qwen3_moe``). Checkpoints are tool-made
by the real msmodelslim 26.1.0 (its qwen3_moe adapter, transformers 4.57.6)
unless the case names a ``handmade`` layout (converted from a tool-made
checkpoint by ``vllm_modelslim.examples.handmade_checkpoints``):

* tool-made: experts W8A8_DYNAMIC, W8A8 static, W8A8_MIX, W8A16, W4A16
  per-group 64 (two int4 per byte along the output dim, zero-point offsets),
  W4A8_DYNAMIC per-channel (packed, ``scale_bias``; attention W8A8_DYNAMIC) and
  per-group 64 (packed, ``weight_scale_second``, ``scale_bias``);
* hand-made: W4A16 in LLM-Compressor's ``pack-quantized`` int32 layout,
  W4A8_DYNAMIC per-group ``version`` "0" (one int4 per byte, no ``scale_bias``)
  and W4A8_DYNAMIC per-channel unpacked with bf16 scales and neither offset nor
  ``scale_bias`` (the layout of vllm-ascend's compressed-tensors W4A8 MoE path).

Per case: every ``FusedMoE`` layer runs the plugin's MoE method with the
expected scheme; greedy generations match the pure-torch reference (per-token,
per-expert loop, ``vllm_modelslim.reference.moe``) under the rules of
``test_schemes_e2e.py``; teacher-forced top-1 agreement with the unquantized
MoE model stays above the scheme's floor.
"""

from __future__ import annotations

import pytest
import torch
from e2e_compare import (
    TOP1_FLOOR,
    Case,
    compare_with_reference,
    engine_fixture,
    evaluation_sequences,
    prompt_sequences,
    reference_for,
    top1_agreement,
)

from model_folders import layer_count
from vllm_modelslim.kernels.cpu_int4_vnni import int4_vnni_unavailable
from vllm_modelslim.kernels.fused_int8_experts import VllmCpuFusedInt8Experts
from vllm_modelslim.kernels.fused_weight_only_experts import Int8VnniFusedWeightOnlyExperts

pytestmark = pytest.mark.engine

FUSED_HERE = VllmCpuFusedInt8Experts.is_supported("cpu")[0]
INT4_FUSED_HERE = int4_vnni_unavailable() is None  # the ISA and the C++ build
W8A16_FUSED_HERE = all(
    check[0]
    for check in (  # the ISA, then the C++ build
        Int8VnniFusedWeightOnlyExperts.is_supported("cpu"),
        Int8VnniFusedWeightOnlyExperts.ops_reason(),
    )
)

CHECKPOINTS = [
    # (recipe, experts' quant type, hand-made layout)
    ("moe_w8a8_dynamic", "W8A8_DYNAMIC", None),
    ("moe_w8a8_static", "W8A8", None),
    ("moe_w8a8_mix", "W8A8_MIX", None),
    ("moe_w8a16", "W8A16", None),
    ("moe_w4a16", "W4A16", None),
    ("moe_w4a16", "W4A16", "w4a16_pack_quantized"),
    ("moe_w4a8_dynamic", "W4A8_DYNAMIC", None),
    ("moe_w4a8_dynamic", "W4A8_DYNAMIC", "w4a8_dynamic_unpacked_per_channel"),
    ("moe_w4a8_dynamic_pergroup", "W4A8_DYNAMIC", None),
    ("moe_w4a8_dynamic_pergroup", "W4A8_DYNAMIC", "w4a8_dynamic_version0"),
]
CASES = [Case(r, q, "float32", handmade=h) for r, q, h in CHECKPOINTS]
CASES += [Case(r, q, "bfloat16") for r, q, h in CHECKPOINTS if h is None]
CASES += [Case("moe_w8a8_mix", "W8A8_MIX", "float32", kv_consumer=True)]
CASES += [
    Case(r, q, "bfloat16", compiled=True)
    for r, q in (("moe_w8a8_dynamic", "W8A8_DYNAMIC"), ("moe_w4a8_dynamic", "W4A8_DYNAMIC"))
]


engine = engine_fixture(CASES)


@pytest.fixture(scope="module")
def prompts(moe_model):
    return prompt_sequences(moe_model)


@pytest.fixture(scope="module")
def eval_sequences(moe_model):
    return evaluation_sequences(moe_model)


def describe_moe_layers(model: torch.nn.Module) -> dict[str, tuple[str, str | None, bool | None, int]]:
    from vllm.model_executor.layers.fused_moe import RoutedExperts

    table = {}
    for name, module in model.named_modules():
        if isinstance(module, RoutedExperts):
            method = module.quant_method
            scheme = getattr(method, "scheme", None)
            consumer = getattr(scheme and scheme.w13, "kv_consumer", None)
            fused = getattr(module, "modelslim_fused_experts", None)
            experts = module.modelslim_local_experts
            built = fused.num_experts if fused is not None else len(module.modelslim_experts)
            assert experts == built, name
            table[module.layer_name] = (
                type(method).__name__,
                getattr(scheme, "quant_type", None),
                consumer,
                experts,
                type(fused).__name__ if fused is not None else None,
            )
    return table


def test_every_moe_layer_runs_its_scheme(engine):
    case, folder, llm = engine
    (table,) = llm.apply_model(describe_moe_layers)
    assert sorted(table) == [f"model.layers.{i}.mlp.experts" for i in range(layer_count(folder))]
    # bf16 experts computing dynamic int8 × per-channel int8 run one fused op where one runs: int4
    # experts (W4A8_DYNAMIC) the project's int4 kernel, else vLLM-CPU's int8 op (int4 held in int8);
    # bf16 W8A16 experts the project's weight-only int8 MoE op
    fused_expected = None
    if case.dtype == "bfloat16" and "pergroup" not in case.recipe:
        int4 = case.quant_type == "W4A8_DYNAMIC"
        if int4 and INT4_FUSED_HERE:
            fused_expected = "Int4VnniFusedExperts"
        elif case.quant_type in ("W8A8_DYNAMIC", "W4A8_DYNAMIC") and FUSED_HERE:
            fused_expected = "VllmCpuFusedInt8Experts"
        elif case.quant_type == "W8A16" and W8A16_FUSED_HERE:
            fused_expected = "Int8VnniFusedWeightOnlyExperts"
    for name, (method, quant_type, consumer, experts, fused) in table.items():
        assert method == "ModelSlimFusedMoEMethod", name
        assert quant_type == case.quant_type, name
        assert experts == 8, name
        assert fused == fused_expected, name
        if case.quant_type == "W8A8_MIX":
            assert consumer is case.kv_consumer, name


def test_greedy_tokens_match_reference(engine, prompts):
    case, folder, llm = engine
    reference = reference_for(folder, case.kv_consumer)
    expected = {f"model.layers.{i}.mlp.experts" for i in range(layer_count(folder))}
    assert set(reference.expert_layers) == expected
    compare_with_reference(llm, reference, prompts, case.dtype, case.quant_type, case.id)


def test_top1_agreement_with_unquantized_moe_model(engine, moe_model, eval_sequences):
    case, _, llm = engine
    share = top1_agreement(llm, reference_for(moe_model), eval_sequences)
    print(f"\n{case.id}: top-1 agreement with the unquantized MoE model {share:.1%}")
    assert share >= TOP1_FLOOR.get(case.quant_type, TOP1_FLOOR["default"])
