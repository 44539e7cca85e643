"""Broken copies of tool-made checkpoints fail to load in a real vLLM engine, with a clear error.

Every case starts from a good msmodelslim checkpoint, breaks one thing, and
checks that ``LLM(..., quantization="ascend")`` raises the plugin's specific
error (never a bare KeyError/AssertionError), that the message names the file
and the layer, that nothing is written into the model folder, and that no
pickle is unpickled (every broken copy also holds a booby-trapped
``pytorch_model.bin``). The cases live in ``tests/breakages.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from breakages import broken_copy, case_params, snapshot
from vllm_modelslim.examples.vllm_runner import make_llm, reset_after_failed_start

pytestmark = pytest.mark.engine


def load_error(folder: Path) -> Exception:
    """The exception ``LLM(...)`` raises, unwrapped from vLLM's config validation.

    Errors raised while vLLM validates its config (description problems) reach
    the caller inside a pydantic ValidationError whose text includes ours.
    """
    from pydantic import ValidationError

    try:
        make_llm(folder, "ascend", kv_cache_memory_bytes=32 * 2**20)
    except ValidationError as exc:
        original = exc.errors()[0].get("ctx", {}).get("error")
        assert isinstance(original, Exception), exc
        assert str(original) in str(exc)
        return original
    except Exception as exc:  # noqa: BLE001 - the test inspects whatever was raised
        return exc
    finally:
        reset_after_failed_start()
    raise AssertionError("the broken checkpoint loaded")


@pytest.mark.parametrize(**case_params())
def test_broken_checkpoint_fails_at_load_with_a_clear_error(
    quantized, tmp_path, recipe, breakage, error, file_text, layer
):
    folder = tmp_path / recipe
    marker = broken_copy(quantized(recipe), folder, breakage)
    before = snapshot(folder)
    raised = load_error(folder)
    message = str(raised)
    print(f"\n{type(raised).__name__}: {message}")
    assert isinstance(raised, error), f"{type(raised).__name__}: {message}"
    assert file_text in message
    if layer is not None:
        assert layer in message
    assert snapshot(folder) == before, "loading must not write into the model folder"
    assert not marker.exists(), "a pickle was unpickled"


def test_the_intact_copy_loads(quantized, tmp_path):
    # Control for the cases above: the same copy procedure without a breakage loads and generates.
    from vllm_modelslim.examples.vllm_runner import close_llm, greedy_generate

    folder = tmp_path / "intact"
    shutil.copytree(quantized("w8a8_dynamic"), folder)
    llm = make_llm(folder, "ascend", kv_cache_memory_bytes=32 * 2**20)
    assert len(greedy_generate(llm, [[1, 2, 3]], 4)[0].token_ids) == 4
    close_llm(llm)
