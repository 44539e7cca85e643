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

    from vllm_modelslim.plugin.quant_config import AscendModelSlimConfig

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


def _classes_in(model) -> list[str]:
    """Module and quant-method classes of a built model, as ``module.qualname``."""
    objects = list(model.modules())
    objects += [m.quant_method for m in model.modules() if getattr(m, "quant_method", None) is not None]
    return sorted({f"{type(o).__module__}.{type(o).__qualname__}" for o in objects})


def test_an_unquantized_model_builds_exactly_vllms_classes(demo_model):
    """With the plugin installed and registered, a model that does not use it is pure vLLM."""
    llm = make_llm(demo_model, quantization=None, kv_cache_memory_bytes=32 * 2**20)
    try:
        (classes,) = llm.apply_model(_classes_in)
    finally:
        close_llm(llm)
    assert "vllm.model_executor.layers.layernorm.RMSNorm" in classes
    assert any(c.endswith("UnquantizedLinearMethod") for c in classes)
    assert [c for c in classes if c.startswith("vllm_modelslim")] == []


def test_an_unsupported_vllm_makes_quantization_ascend_fail_with_the_reason(monkeypatch, quantized):
    """register() logs and does not raise; asking for ``ascend`` then fails with the same message."""
    import vllm

    import vllm_modelslim
    from vllm_modelslim.examples.vllm_runner import reset_after_failed_start

    folder = quantized("w8a8_static")
    monkeypatch.setattr(vllm, "__version__", "0.20.1")
    try:
        vllm_modelslim.register()
        with pytest.raises(RuntimeError, match=r"vllm-modelslim is disabled: vLLM 0\.20\.1 is installed"):
            try:
                make_llm(folder, "ascend", kv_cache_memory_bytes=32 * 2**20)
            finally:
                reset_after_failed_start()
    finally:
        monkeypatch.undo()
        vllm_modelslim.register()
