"""The C8 KV cache stored as int8 vs in bf16: identical results, twice the capacity.

A module of its own: an in-process engine created while a compiled engine of an
earlier test is still alive (the e2e module keeps its last engine until the
module ends) was measured to compute slightly different bf16 log-probabilities
(-0.4902 vs -0.4931 for one token), whatever its KV storage, so exact
comparisons run with no other engine alive.
"""

from __future__ import annotations

import pytest
from e2e_compare import NEAR_TIE_NATS, NEW_TOKENS, evaluation_sequences, prompt_sequences

from vllm_modelslim.examples.vllm_runner import close_llm, greedy_generate, make_llm

pytestmark = pytest.mark.engine


def test_int8_storage_is_exact_and_doubles_the_cache(quantized, demo_model):
    """bf16: the int8 cache and the bf16 round-trip cache give identical results; int8 holds 2× the tokens.

    A 300-token prompt sent twice makes the second request read its first
    blocks from the prefix cache (written by the first request). Both storages
    run the same batches, so their results must be identical however the GEMMs
    round; whether a request gives the same bf16 result alone and inside a
    batch (it need not: AMX GEMMs round differently with the row count) is
    not asserted here — see the float32 test below for the prefix cache.
    """
    folder = quantized("w8a8c8")
    long_prompt = _long_prompt(demo_model)
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
    print(f"prefix-cache hit of the repeated prompt: {int8_again[0].cached_tokens} of 300 tokens")
    assert int8_again[0].cached_tokens >= 256


def test_int8_prefix_cache_blocks_read_back_exactly(quantized, demo_model):
    """float32, int8 storage: a prompt answered from its cached int8 prefix blocks = the same prompt computed.

    The same request is sent twice to one engine: cold (every block computed
    and written as int8) and again (its first blocks read from the prefix
    cache). Both are single requests; only the number of rows the prefill
    computes differs, which in float32 moves log-probabilities by float32
    noise at most, while a prefix block read back wrong (wrong slot, scale or
    offset) changes them by far more than the bound.
    """
    long_prompt = _long_prompt(demo_model)
    llm = make_llm(
        quantized("w8a8c8"), dtype="float32", additional_config={"modelslim_kv_cache_storage": "int8"}
    )
    try:
        (cold,) = greedy_generate(llm, [long_prompt], NEW_TOKENS)
        (again,) = greedy_generate(llm, [long_prompt], NEW_TOKENS)
    finally:
        close_llm(llm)
    assert cold.cached_tokens == 0
    assert again.cached_tokens >= 256, again.cached_tokens
    assert again.token_ids == cold.token_ids
    drift = max(abs(a - b) for a, b in zip(again.logprobs, cold.logprobs, strict=True))
    print(f"\nfloat32 prefix hit vs cold: largest log-probability difference {drift:.2e}")
    assert drift < NEAR_TIE_NATS


def _long_prompt(demo_model) -> list[int]:
    """A 300-token prompt: more than 256 tokens, so whole 16-token blocks land in the prefix cache."""
    return [t for p in evaluation_sequences(demo_model) for t in p][:300]


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
