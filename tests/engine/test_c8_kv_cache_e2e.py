"""ModelSlim W8A8C8 checkpoints (int8 KV cache) served by a real vLLM engine with quantization="ascend".

Checkpoints are tool-made by the real msmodelslim 26.1.0 (its ``dynamic_cache``
step, per-channel int8): the dense demo model with W8A8 static linears and a
symmetric cache (zero ``kv_cache_offset``), with W8A8_DYNAMIC linears and an
asymmetric cache (offsets up to ±53, which exercises the dequantization rule),
and the tiny Qwen3-MoE with W8A8 static experts and a symmetric cache.

Per case: every attention layer runs the C8 KV-cache method, on vLLM's CPU
backend with the cache stored as int8 (or in the model dtype when asked);
greedy generations match the pure-torch reference whose ``DynamicCache``
quantize-dequantizes K/V exactly as msmodelslim's calibration does (rules of
``test_schemes_e2e.py``: identical float32 tokens, bf16 teacher-forced bounds),
and they are measurably closer to it than to the same reference without the KV
quantization; teacher-forced top-1 agreement with the unquantized model stays
above the W8 floor. ``test_c8_kv_cache_storage.py`` compares the int8 and the
bf16 storage of the cache.
"""

from __future__ import annotations

import pytest
import torch
from e2e_compare import (
    NEW_TOKENS,
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
from vllm_modelslim.examples.vllm_runner import greedy_generate
from vllm_modelslim.reference.model import ReferenceModel

pytestmark = pytest.mark.engine

CASES = [
    Case("w8a8c8", "W8A8", "float32"),
    Case("w8a8c8_asym", "W8A8_DYNAMIC", "float32"),
    Case("w8a8c8_asym", "W8A8_DYNAMIC", "float32", kv_cache_storage="model-dtype"),
    Case("w8a8c8", "W8A8", "bfloat16"),
    Case("moe_w8a8c8", "W8A8", "bfloat16"),
    Case("w8a8c8", "W8A8", "bfloat16", compiled=True),  # vLLM's default mode (what `vllm serve` runs)
]

engine = engine_fixture(CASES)


def describe_attention(model: torch.nn.Module) -> dict[str, tuple[str, str, torch.dtype, torch.dtype]]:
    from vllm.model_executor.layers.attention.attention import Attention

    return {
        module.layer_name: (
            type(module.quant_method).__name__,
            type(module.impl).__name__,
            module.kv_cache_torch_dtype,
            module.kv_cache.dtype,
        )
        for module in model.modules()
        if isinstance(module, Attention)
    }


def _model_dir(request, case: Case):
    return request.getfixturevalue("moe_model" if case.recipe.startswith("moe_") else "demo_model")


def test_every_attention_layer_runs_the_c8_kv_cache(engine):
    case, folder, llm = engine
    (table,) = llm.apply_model(describe_attention)
    assert sorted(table) == [f"model.layers.{i}.self_attn.attn" for i in range(layer_count(folder))]
    int8 = case.kv_cache_storage != "model-dtype"
    for name, (method, impl, spec_dtype, cache_dtype) in table.items():
        assert method == "C8KVCacheMethod", name
        assert impl == ("Int8PagedCPUAttentionImpl" if int8 else "CPUAttentionBackendImplRoundTripInt8KV"), (
            name
        )
        expected = torch.int8 if int8 else getattr(torch, case.dtype)
        assert spec_dtype == cache_dtype == expected, name


def test_greedy_tokens_match_c8_reference(engine, request):
    case, folder, llm = engine
    reference = reference_for(folder)
    assert sorted(reference.kv_cache_quant) == list(range(layer_count(folder)))
    prompts = prompt_sequences(_model_dir(request, case))
    compare_with_reference(llm, reference, prompts, case.dtype, case.quant_type, case.id)


def test_kv_quantization_is_what_makes_the_match(engine, request):
    """vLLM's log-probabilities follow the C8 reference, not the same model with a float KV cache."""
    case, folder, llm = engine
    if case.dtype != "float32":
        pytest.skip("the float32 engines resolve the KV quantization error; bf16 noise is of its size")
    with_c8 = reference_for(folder)
    without_c8 = ReferenceModel(folder)
    without_c8.kv_cache_quant = {}
    prompts = prompt_sequences(_model_dir(request, case))
    gaps = {"C8": [], "float KV": []}
    for gen in greedy_generate(llm, prompts, NEW_TOKENS):
        sequence = gen.prompt_ids + gen.token_ids
        for name, reference in (("C8", with_c8), ("float KV", without_c8)):
            logprobs = reference.token_logprobs(sequence)[len(gen.prompt_ids) - 1 :]
            chosen = logprobs[torch.arange(len(gen.token_ids)), torch.tensor(gen.token_ids)]
            gaps[name] += (chosen - torch.tensor(gen.logprobs, dtype=torch.float64)).abs().tolist()
    c8, float_kv = (torch.tensor(v).mean().item() for v in gaps.values())
    print(f"\n{case.id}: mean |logprob - reference| with C8 {c8:.2e}, with a float KV cache {float_kv:.2e}")
    assert c8 * 20 < float_kv


def test_top1_agreement_with_unquantized_model(engine, request):
    case, _, llm = engine
    model_dir = _model_dir(request, case)
    share = top1_agreement(llm, reference_for(model_dir), evaluation_sequences(model_dir))
    print(f"\n{case.id}: top-1 agreement with the unquantized model {share:.1%}")
    assert share >= TOP1_FLOOR["default"]
