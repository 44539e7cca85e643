"""The plugin is found through vLLM's entry point and answers to both names."""

from __future__ import annotations

import importlib.metadata

import pytest

from vllm_modelslim.examples.vllm_runner import close_llm, greedy_generate, make_llm

pytestmark = pytest.mark.engine


def test_entry_point_is_installed():
    entry_points = importlib.metadata.entry_points(group="vllm.general_plugins")
    assert "vllm_modelslim:register" in {ep.value for ep in entry_points}


def test_vllm_loads_the_plugin_and_knows_both_names():
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS, get_quantization_config
    from vllm.plugins import load_general_plugins

    from vllm_modelslim.format.quant_config import AscendModelSlimConfig

    load_general_plugins()
    for name in ("ascend", "modelslim"):
        assert name in QUANTIZATION_METHODS
        assert get_quantization_config(name) is AscendModelSlimConfig


def test_modelslim_alias_gives_the_same_tokens(quantized):
    folder = quantized("w8a8_static")
    results = {}
    for name in ("ascend", "modelslim"):
        llm = make_llm(folder, name, kv_cache_memory_bytes=32 * 2**20)
        results[name] = [g.token_ids for g in greedy_generate(llm, [[5, 6, 7, 8]], 8)]
        close_llm(llm)
    assert results["ascend"] == results["modelslim"]
