"""The C8 KV cache stored as int8 vs in bf16: identical results, twice the capacity.

A module of its own: an in-process engine created while a compiled engine of an
earlier test is still alive (the e2e module keeps its last engine until the
module ends) was measured to compute slightly different bf16 log-probabilities
(-0.4902 vs -0.4931 for one token), whatever its KV storage, so exact
comparisons run with no other engine alive.
"""

from __future__ import annotations

import pytest
from e2e_compare import NEW_TOKENS, evaluation_sequences, prompt_sequences

from vllm_modelslim.examples.vllm_runner import close_llm, greedy_generate, make_llm

pytestmark = pytest.mark.engine


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


def test_unknown_storage_option_is_refused(quantized):
    from vllm_modelslim.examples.vllm_runner import reset_after_failed_start

    with pytest.raises(ValueError, match="modelslim_kv_cache_storage='fp8': use 'int8' or 'model-dtype'"):
        try:
            make_llm(quantized("w8a8c8"), additional_config={"modelslim_kv_cache_storage": "fp8"})
        finally:
            reset_after_failed_start()
