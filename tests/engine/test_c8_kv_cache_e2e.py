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
above the W8 floor. A bf16 engine with the cache stored as int8 produces exactly
the tokens and log-probabilities of one that stores the round-tripped values in
bf16, with twice the cache capacity.
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

from vllm_modelslim.examples.vllm_runner import close_llm, greedy_generate, make_llm
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
    case, _, llm = engine
    (table,) = llm.apply_model(describe_attention)
    assert sorted(table) == [f"model.layers.{i}.self_attn.attn" for i in range(2)]
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
    assert sorted(reference.kv_cache_quant) == [0, 1]
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


def test_int8_storage_is_exact_and_doubles_the_cache(quantized, demo_model):
    """bf16: the int8 cache and the bf16 round-trip cache give identical results; int8 holds 2× the tokens.

    A 300-token prompt sent twice makes the second request read its first
    blocks from the prefix cache (written by the first request).
    """
    folder = quantized("w8a8c8")
    long_prompt = [t for p in evaluation_sequences(demo_model) for t in p][:300]
    runs = {}
    for storage in ("int8", "model-dtype"):
        llm = make_llm(folder, additional_config={"modelslim_kv_cache_storage": storage})
        try:
            blocks = llm.llm_engine.vllm_config.cache_config.num_gpu_blocks
            first = greedy_generate(llm, prompt_sequences(demo_model) + [long_prompt], NEW_TOKENS)
            again = greedy_generate(llm, [long_prompt], NEW_TOKENS)
            runs[storage] = (blocks, first, again)
        finally:
            close_llm(llm)
    (int8_blocks, int8_gens, int8_again), (bf16_blocks, bf16_gens, bf16_again) = (
        runs["int8"],
        runs["model-dtype"],
    )
    print(f"\nKV cache blocks in the same budget: int8 {int8_blocks}, bf16 {bf16_blocks}")
    assert int8_blocks == 2 * bf16_blocks
    for a, b in zip(int8_gens + int8_again, bf16_gens + bf16_again, strict=True):
        assert a.token_ids == b.token_ids
        assert a.logprobs == b.logprobs
    assert int8_again[0].token_ids == int8_gens[-1].token_ids
    print(f"prefix-cache hit of the repeated prompt: {int8_again[0].cached_tokens} of 300 tokens")
    assert int8_again[0].cached_tokens >= 256


def test_other_kv_cache_dtype_is_refused(quantized):
    from vllm_modelslim.examples.vllm_runner import reset_after_failed_start
    from vllm_modelslim.format import UnknownQuantTypeError

    with pytest.raises(UnknownQuantTypeError, match="kv_cache_dtype='fp8'") as raised:
        try:
            make_llm(quantized("w8a8c8"), kv_cache_dtype="fp8")
        finally:
            reset_after_failed_start()
    assert "model.layers.0.self_attn" in str(raised.value)
