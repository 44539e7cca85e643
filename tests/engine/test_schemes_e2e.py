"""ModelSlim checkpoints served by a real vLLM engine with quantization="ascend", against the reference.

Checkpoints are tool-made (the real msmodelslim 26.1.0) unless the case says
``handmade`` (a layout msmodelslim no longer writes, converted from a tool-made
checkpoint by ``vllm_modelslim.examples.handmade_checkpoints``). For each case
one in-process engine is started (eager; vLLM's default torch.compile mode for
a few) and:

* every linear layer must run the plugin's scheme for its quant type;
* greedy generations are compared with the pure-torch reference forward of the
  same checkpoint (``vllm_modelslim.reference``). In float32 the tokens must be
  identical and log-probabilities agree to 1e-4 for weight-only schemes; with
  activation quantization, fp32-level differences in a layer's input flip the
  rounding of single activations now and then (each flip is worth up to ~1e-2
  nats on this model), so those agree to 1e-3 on average and 5e-2 at worst, and
  one sequence per case may branch where the reference's two best tokens are
  within 1e-2 nats (its prefix is compared as above). In bfloat16, vLLM's and
  the reference's float rounding differ, and bf16 rounding of an activation is
  as coarse as its int8 quantization step, so sequences branch at near-ties and
  single tokens can differ by tenths of a nat: vLLM's tokens are teacher-forced
  through the reference and the mean log-probability difference, the mean gap to
  the reference's best token and the largest gap are bounded (``BF16_BOUNDS``;
  int4 activations, where bf16 rounding flips ~5% of the quantized values, get
  wider bounds; their exactness is checked in float32);
* teacher-forced top-1 agreement with the unquantized model is reported and
  must stay above a per-scheme floor.
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

pytestmark = pytest.mark.engine


CHECKPOINTS = [
    # (recipe, quant type, hand-made layout)
    ("w8a8_dynamic", "W8A8_DYNAMIC", None),
    ("w8a8_static", "W8A8", None),
    ("w8a8_static_fp32", "W8A8", None),  # deq_scale stored as int64 fp32 bits
    ("w8a8_static_m4", "W8A8", None),  # old pipeline, anti-outlier norm biases
    ("w8a8_mix", "W8A8_MIX", None),
    ("w8a16", "W8A16", None),
    ("w8a16_asym", "W8A16", None),
    ("w4a16", "W4A16", None),
    ("w4a16_asym", "W4A16", None),
    ("w4a16", "W4A16", "w4a16_pack_quantized"),
    ("w4a8_dynamic", "W4A8_DYNAMIC", None),
    ("w4a8_dynamic_pergroup", "W4A8_DYNAMIC", None),
    ("w4a8_dynamic_pergroup", "W4A8_DYNAMIC", "w4a8_dynamic_version0"),
    ("w4a4_dynamic", "W4A4_DYNAMIC", None),
    ("w4a4_flatquant", "W4A4_FLATQUANT_DYNAMIC", None),
]
CASES = [Case(r, q, d, handmade=h) for r, q, h in CHECKPOINTS for d in ("float32", "bfloat16")]
CASES += [Case("w8a8_mix", "W8A8_MIX", d, kv_consumer=True) for d in ("float32", "bfloat16")]
CASES += [
    Case(r, q, "bfloat16", compiled=True)
    for r, q in (("w8a8_dynamic", "W8A8_DYNAMIC"), ("w8a8_static", "W8A8"), ("w8a16_asym", "W8A16"),
                 ("w4a16_asym", "W4A16"), ("w4a4_flatquant", "W4A4_FLATQUANT_DYNAMIC"))
]  # fmt: skip


engine = engine_fixture(CASES)


@pytest.fixture(scope="module")
def prompts(demo_model):
    return prompt_sequences(demo_model)


@pytest.fixture(scope="module")
def eval_sequences(demo_model):
    return evaluation_sequences(demo_model)


def describe_layers(model: torch.nn.Module) -> dict[str, tuple[str, str | None, bool | None]]:
    from vllm.model_executor.layers.linear import LinearBase

    table = {}
    for name, module in model.named_modules():
        if isinstance(module, LinearBase) or name.endswith("lm_head"):
            method = module.quant_method
            scheme = getattr(method, "scheme", None)
            consumer = getattr(scheme, "kv_consumer", None)
            table[name] = (type(method).__name__, getattr(scheme, "quant_type", None), consumer)
    return table


def test_every_linear_layer_runs_its_scheme(engine):
    case, folder, llm = engine
    (table,) = llm.apply_model(describe_layers)
    quantized = {name: entry for name, entry in table.items() if not name.endswith("lm_head")}
    assert len(quantized) == layer_count(folder) * 4  # qkv, o, gate_up, down per layer
    for name, (method, quant_type, consumer) in quantized.items():
        assert method == "ModelSlimLinearMethod", name
        assert quant_type == case.quant_type, name
        if case.quant_type == "W8A8_MIX":
            assert consumer is case.kv_consumer, name
    assert table["lm_head"][0] == "UnquantizedEmbeddingMethod"


def describe_weight_copies(model: torch.nn.Module) -> list[tuple[str, list[bool], int, list[bool], int]]:
    from vllm_modelslim.kernels.base import QuantKernel

    rows = []
    for name, module in model.named_modules():
        kernels = [m for m in module.modules() if isinstance(m, QuantKernel) and m.holds_weight]
        if hasattr(module, "modelslim_kernel") or hasattr(module, "modelslim_kernels"):
            stored = getattr(module, "weight", None)
            stored = getattr(module, "weight_packed", None) if stored is None else stored
            scale = getattr(module, "weight_scale", None)
            rows.append(
                (
                    name,
                    [k.copies_weight for k in kernels],
                    stored.numel(),
                    [k.copies_scales for k in kernels],
                    -1 if scale is None else scale.numel(),
                )
            )
    return rows


def test_one_weight_copy_per_layer(engine):
    """A kernel with its own (prepacked) weight copy frees the layer's checkpoint tensor; others share it.
    The same for the scales, where the kernels keep them in their own layout (int4pack)."""
    _, _, llm = engine
    (rows,) = llm.apply_model(describe_weight_copies)
    assert rows
    for name, copies, weight_numel, copies_scales, scale_numel in rows:
        assert copies, name
        assert (weight_numel == 0) == all(copies), (name, copies, weight_numel)
        if scale_numel >= 0:
            assert (scale_numel == 0) == all(copies + copies_scales), (name, copies_scales, scale_numel)


def test_greedy_tokens_match_reference(engine, prompts):
    case, folder, llm = engine
    reference = reference_for(folder, case.kv_consumer)
    compare_with_reference(llm, reference, prompts, case.dtype, case.quant_type, case.id)


def test_top1_agreement_with_unquantized_model(engine, demo_model, eval_sequences):
    case, _, llm = engine
    share = top1_agreement(llm, reference_for(demo_model), eval_sequences)
    print(f"\n{case.id}: top-1 agreement with the unquantized model {share:.1%}")
    assert share >= TOP1_FLOOR.get(case.quant_type, TOP1_FLOOR["default"])
