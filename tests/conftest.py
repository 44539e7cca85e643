"""Shared fixtures: the demo model and its msmodelslim checkpoints (built once, cached).

The demo model and the msmodelslim outputs are cached under
``$MODELSLIM_CACHE_DIR`` (default ``~/.cache/vllm-modelslim``); the first run
builds them (about two minutes of training plus seconds per msmodelslim
recipe and a one-time virtualenv for msmodelslim).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# In-process vLLM engines: fast to start (seconds), and load errors surface as
# the plugin's own exception types. One module runs the multiprocess engine.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


@pytest.fixture(scope="session")
def demo_model() -> Path:
    """The trained tiny Qwen3 (bf16 Hugging Face checkpoint with tokenizer)."""
    from vllm_modelslim.examples.tiny_qwen3 import demo_model_dir

    return demo_model_dir()


@pytest.fixture(scope="session")
def moe_model(demo_model) -> Path:
    """The tiny Qwen3-MoE upcycled from the demo model (bf16 Hugging Face checkpoint with tokenizer)."""
    from vllm_modelslim.examples.tiny_qwen3_moe import cached_tiny_qwen3_moe

    return cached_tiny_qwen3_moe(progress=print)


@pytest.fixture(scope="session")
def quantized(demo_model):
    """``quantized(recipe_name) -> Path``: a tool-made msmodelslim checkpoint (cached).

    MoE recipes quantize the tiny Qwen3-MoE, the others the dense demo model.
    """
    from vllm_modelslim.examples.msmodelslim_runner import RECIPES, quantize
    from vllm_modelslim.examples.tiny_qwen3_moe import cached_tiny_qwen3_moe

    made: dict[str, Path] = {}

    def get(recipe: str) -> Path:
        if recipe not in made:
            model = cached_tiny_qwen3_moe(progress=print) if RECIPES[recipe].moe else demo_model
            made[recipe] = quantize(model, recipe, log=print)
        return made[recipe]

    return get


@pytest.fixture(scope="session")
def llmcompressor_checkpoint(demo_model):
    """``llmcompressor_checkpoint(scheme, moe=False) -> Path``: a tool-made LLM-Compressor checkpoint.

    Made from the demo model (or the tiny Qwen3-MoE) by the real LLM-Compressor
    in its own virtualenv; cached.
    """
    from vllm_modelslim.examples.llmcompressor_runner import quantize_with_llmcompressor
    from vllm_modelslim.examples.tiny_qwen3_moe import cached_tiny_qwen3_moe

    made: dict[tuple[str, bool], Path] = {}

    def get(scheme: str, moe: bool = False) -> Path:
        if (scheme, moe) not in made:
            model = cached_tiny_qwen3_moe(progress=print) if moe else demo_model
            made[scheme, moe] = quantize_with_llmcompressor(model, scheme, log=print)
        return made[scheme, moe]

    return get


@pytest.fixture(scope="session")
def checkpoint(quantized):
    """``checkpoint(recipe, handmade=None) -> Path``: tool-made, or a hand-made layout converted from it."""
    from vllm_modelslim.examples.handmade_checkpoints import (
        write_w4a8_unpacked_per_channel_layout,
        write_w4a8_version0_layout,
        write_w4a16_pack_quantized_layout,
    )
    from vllm_modelslim.examples.msmodelslim_runner import cache_dir

    writers = {
        "w4a8_dynamic_version0": write_w4a8_version0_layout,
        "w4a8_dynamic_unpacked_per_channel": write_w4a8_unpacked_per_channel_layout,
        "w4a16_pack_quantized": write_w4a16_pack_quantized_layout,
    }

    def get(recipe: str, handmade: str | None = None) -> Path:
        source = quantized(recipe)
        if handmade is None:
            return source
        return writers[handmade](source, cache_dir() / "handmade" / f"{handmade}-{source.name}")

    return get


@pytest.fixture(scope="session")
def glm4_moe_model(demo_model) -> Path:
    """The tiny GLM-4.5 MoE (shared experts, one dense layer, one MTP layer) upcycled from the demo model."""
    from vllm_modelslim.examples.tiny_glm4_moe import cached_tiny_glm4_moe

    return cached_tiny_glm4_moe(progress=print)


@pytest.fixture(scope="session")
def glm4_moe_checkpoint(glm4_moe_model):
    """``glm4_moe_checkpoint(recipe) -> Path``: the tiny GLM-4.5 MoE quantized by msmodelslim (cached)."""
    from vllm_modelslim.examples.msmodelslim_runner import quantize

    return lambda recipe: quantize(glm4_moe_model, recipe, log=print)


@pytest.fixture(scope="session")
def deepseek_v3_model() -> Path:
    """The tiny random DeepSeek-V3 (MLA, MoE with shared expert and grouped routing; no MTP layer)."""
    from vllm_modelslim.examples.tiny_deepseek_v3 import cached_tiny_deepseek_v3

    return cached_tiny_deepseek_v3(progress=print)


@pytest.fixture(scope="session")
def deepseek_v3_checkpoint(deepseek_v3_model):
    """``deepseek_v3_checkpoint(recipe) -> Path``: the tiny DeepSeek-V3 quantized by msmodelslim (cached)."""
    from vllm_modelslim.examples.msmodelslim_runner import quantize

    return lambda recipe: quantize(deepseek_v3_model, recipe, log=print)


@pytest.fixture(scope="session")
def deepseek_v3_mtp_checkpoint(deepseek_v3_checkpoint):
    """``deepseek_v3_mtp_checkpoint(describe_as) -> (source, folder)``, each folder written once per session.

    Hand-made (``write_with_float_mtp_layer``): the tool-made W8A8_DYNAMIC
    checkpoint plus a float MTP layer, absent from the description
    (``describe_as`` None) or listed under ``describe_as`` without its tensors.
    """
    from vllm_modelslim.examples.msmodelslim_runner import cache_dir
    from vllm_modelslim.examples.tiny_deepseek_v3 import (
        TinyDeepseekV3Spec,
        cached_tiny_deepseek_v3,
        write_with_float_mtp_layer,
    )

    source = deepseek_v3_checkpoint("deepseek_v3_w8a8_dynamic")
    mtp_model = cached_tiny_deepseek_v3(TinyDeepseekV3Spec(num_nextn_predict_layers=1), progress=print)
    folders: dict[str | None, Path] = {}

    def build(describe_as: str | None = None) -> tuple[Path, Path]:
        if describe_as not in folders:
            name = "mtp-float" if describe_as is None else "mtp-bad"
            folders[describe_as] = write_with_float_mtp_layer(
                source, cache_dir() / "handmade" / f"{name}-{source.name}", mtp_model, describe_as=describe_as
            )
        return source, folders[describe_as]

    return build
