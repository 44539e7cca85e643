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
    from vllm_modelslim.examples.tiny_qwen3 import cached_tiny_qwen3

    return cached_tiny_qwen3(progress=print)


@pytest.fixture(scope="session")
def quantized(demo_model):
    """``quantized(recipe_name) -> Path``: a tool-made msmodelslim checkpoint (cached)."""
    from vllm_modelslim.examples.msmodelslim_runner import quantize

    made: dict[str, Path] = {}

    def get(recipe: str) -> Path:
        if recipe not in made:
            made[recipe] = quantize(demo_model, recipe, log=print)
        return made[recipe]

    return get
