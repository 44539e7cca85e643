"""Quantize a local model with the real msmodelslim tool, in its own virtualenv, with caching.

msmodelslim (PyPI ``msmodelslim==26.1.0``) runs on CPU with ``--device cpu``.
It pins no torch/transformers and some of its paths need older transformers
than vLLM's, so it runs in a separate virtualenv that this module creates on
first use (``<cache>/venvs/msmodelslim-26.1.0-tf<version>``) with the same torch
version as the running process. Set ``MODELSLIM_PYTHON`` to use
an existing interpreter that has msmodelslim instead.

Each recipe pairs one of the project's msmodelslim configs
(``examples/configs/*.yaml``, msmodelslim's own format) with the model dtype
it needs; the calibration text is written by this project (docstrings of the
standard library), never taken from a hub. Outputs are cached under
``<cache>/checkpoints/<recipe>-<key>`` and reused while the model and config
are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from vllm_modelslim.format.description import load_description

MSMODELSLIM_VERSION = "26.1.0"
DEFAULT_TRANSFORMERS = "5.19.0"
PYTHON_OVERRIDE_ENV = "MODELSLIM_PYTHON"
CACHE_ENV = "MODELSLIM_CACHE_DIR"


@dataclass(frozen=True)
class QuantRecipe:
    """One way of quantizing the demo model with msmodelslim.

    Attributes:
        name: short name, also the cache folder prefix.
        config: file name in ``examples/configs`` ('' with ``practice_quant_type``).
        quant_types: quant types the description must contain afterwards
            (msmodelslim can "succeed" while leaving every layer FLOAT).
        model_dtype: dtype of the model copy handed to msmodelslim (its GPTQ
            and iter_smooth paths fail on bf16 models).
        msmodelslim_model_type: ``--model_type`` (selects msmodelslim's adapter).
        transformers: transformers version of the msmodelslim virtualenv.
        seconds: rough wall time on 2 CPU cores (for progress messages).
        equal_length_calibration: FlatQuant needs every calibration sample to
            tokenize to the same length.
        extended: slow (minutes); run by the extended test command only.
        moe: a Qwen3-MoE recipe: every routed expert must come out quantized
            (with transformers 5.x msmodelslim silently leaves them FLOAT).
        site_dir: folder of ``examples`` put on the tool's ``PYTHONPATH`` (its
            ``sitecustomize.py`` adjusts transformers inside the tool's process).
        practice_quant_type: run msmodelslim's own built-in practice configuration for
            ``msmodelslim_model_type`` and this ``--quant_type`` (no ``--config_path``; it
            brings its own calibration set; an interactive question is answered y).
    """

    name: str
    config: str
    quant_types: tuple[str, ...]
    model_dtype: str = "bfloat16"
    msmodelslim_model_type: str = "Qwen3-8B"
    transformers: str = DEFAULT_TRANSFORMERS
    seconds: int = 15
    equal_length_calibration: bool = False
    extended: bool = False
    moe: bool = False
    site_dir: str | None = None
    practice_quant_type: str | None = None


MOE_MODEL_TYPE = "Qwen3-30B"
"""``--model_type`` that selects msmodelslim's qwen3_moe adapter."""
MOE_TRANSFORMERS = "4.57.6"
"""The transformers version whose per-expert modules msmodelslim's MoE adapter recognises."""


def _moe(name: str, quant_types: tuple[str, ...], seconds: int = 30) -> QuantRecipe:
    return QuantRecipe(
        name, f"{name}.yaml", quant_types, msmodelslim_model_type=MOE_MODEL_TYPE,
        transformers=MOE_TRANSFORMERS, seconds=seconds, moe=True,
    )  # fmt: skip


GLM4_MOE_MODEL_TYPE = "GLM-4.5"
"""``--model_type`` that selects msmodelslim's glm4_moe adapter (it quantizes the MTP layer too)."""


def _glm4_moe(name: str, quant_types: tuple[str, ...], seconds: int = 40) -> QuantRecipe:
    return QuantRecipe(
        name, f"{name}.yaml", quant_types, msmodelslim_model_type=GLM4_MOE_MODEL_TYPE,
        transformers=MOE_TRANSFORMERS, seconds=seconds, moe=True, site_dir="msmodelslim_site",
    )  # fmt: skip


DEEPSEEK_V3_MODEL_TYPE = "Kimi-K2-Thinking"
"""``--model_type`` for the tiny DeepSeek-V3: msmodelslim's kimi_k2 adapter (same architecture, no
MTP handling). Its DeepSeek-V3 adapter hard-codes the real 61-layer MTP layout (not used here)."""


def _deepseek_v3(name: str, quant_types: tuple[str, ...], seconds: int = 45) -> QuantRecipe:
    return QuantRecipe(
        name, f"{name}.yaml", quant_types, msmodelslim_model_type=DEEPSEEK_V3_MODEL_TYPE,
        transformers=MOE_TRANSFORMERS, seconds=seconds, moe=True, site_dir="msmodelslim_site",
    )  # fmt: skip


RECIPES: dict[str, QuantRecipe] = {
    r.name: r
    for r in (
        QuantRecipe("w8a8_dynamic", "w8a8_dynamic.yaml", ("W8A8_DYNAMIC",)),
        QuantRecipe("w8a8_static", "w8a8_static.yaml", ("W8A8",), seconds=30),
        # From an fp32 model msmodelslim stores deq_scale as int64 fp32 bit patterns (ERRATA 2).
        QuantRecipe("w8a8_static_fp32", "w8a8_static.yaml", ("W8A8",), model_dtype="float32", seconds=30),
        QuantRecipe("w8a16", "w8a16.yaml", ("W8A16",)),
        QuantRecipe("w8a16_asym", "w8a16_asym.yaml", ("W8A16",), model_dtype="float32", seconds=20),
        # Old pipeline (modelslim_v0) with m4 anti-outlier smoothing: writes *norm.bias tensors.
        QuantRecipe("w8a8_static_m4", "w8a8_static_m4.yaml", ("W8A8",)),
        QuantRecipe("w8a8_mix", "w8a8_mix.yaml", ("W8A8_MIX",)),
        # The Qwen3 practice's pdmix (modelslim_v0) with named FLOAT rollbacks: mixed fused layers.
        QuantRecipe("w8a8_mix_partial_float", "w8a8_mix_partial_float.yaml", ("W8A8_MIX",), seconds=40),
        # msmodelslim's own built-in practice for Qwen3-14B (no config file; m4 smoothing,
        # pdmix, sensitivity-based FLOAT rollback of 10 layers): ~1.5 CPU-minutes.
        QuantRecipe(
            "qwen3_14b_practice_w8a8",
            "",
            ("W8A8_MIX",),
            msmodelslim_model_type="Qwen3-14B",
            practice_quant_type="w8a8",
            seconds=130,
            extended=True,
        ),
        QuantRecipe("w4a16", "w4a16.yaml", ("W4A16",)),
        QuantRecipe("w4a16_asym", "w4a16_asym.yaml", ("W4A16",)),
        QuantRecipe("w4a8_dynamic", "w4a8_dynamic.yaml", ("W4A8_DYNAMIC",)),
        QuantRecipe("w4a8_dynamic_pergroup", "w4a8_dynamic_pergroup.yaml", ("W4A8_DYNAMIC",)),
        QuantRecipe("w4a4_dynamic", "w4a4_dynamic.yaml", ("W4A4_DYNAMIC",), seconds=20),
        # int8 KV cache (C8): kv_cache_scale/offset per k_proj/v_proj; asym writes non-zero offsets.
        QuantRecipe("w8a8c8", "w8a8c8.yaml", ("W8A8",), seconds=40),
        QuantRecipe("w8a8c8_asym", "w8a8c8_asym.yaml", ("W8A8_DYNAMIC",), seconds=20),
        QuantRecipe(
            "w4a4_flatquant",
            "w4a4_flatquant.yaml",
            ("W4A4_FLATQUANT_DYNAMIC",),
            transformers="4.51.0",
            equal_length_calibration=True,
            seconds=30,
        ),
        QuantRecipe(
            "w4a4_dynamic_autoround",
            "w4a4_dynamic_autoround.yaml",
            ("W4A4_DYNAMIC",),
            seconds=150,
            extended=True,
        ),
        # Tiny Qwen3-MoE (examples/tiny_qwen3_moe.py); the router (mlp.gate) stays FLOAT.
        _moe("moe_w8a8_dynamic", ("W8A8_DYNAMIC",)),
        _moe("moe_w8a8_static", ("W8A8",)),
        _moe("moe_w8a8_mix", ("W8A8_MIX",)),
        _moe("moe_w8a8c8", ("W8A8",)),
        _moe("moe_w8a16", ("W8A16",)),
        _moe("moe_w4a16", ("W4A16",)),
        _moe("moe_w4a8_dynamic", ("W8A8_DYNAMIC", "W4A8_DYNAMIC")),
        _moe("moe_w4a8_dynamic_pergroup", ("W4A8_DYNAMIC",), seconds=45),
        # Tiny GLM-4.5 MoE (examples/tiny_glm4_moe.py): router and e_score_correction_bias stay float.
        # No static W8A8: the glm4_moe adapter's calibration forward moves the MTP inputs to "npu".
        _glm4_moe("glm4_moe_w8a8_dynamic", ("W8A8_DYNAMIC",)),
        _glm4_moe("glm4_moe_w4a8_dynamic", ("W8A8_DYNAMIC", "W4A8_DYNAMIC")),
        # Tiny DeepSeek-V3 (examples/tiny_deepseek_v3.py): router and e_score_correction_bias stay float.
        _deepseek_v3("deepseek_v3_w8a8_dynamic", ("W8A8_DYNAMIC",)),
        _deepseek_v3("deepseek_v3_w8a8_static_attn", ("W8A8", "W8A8_DYNAMIC"), seconds=120),
        _deepseek_v3("deepseek_v3_w4a8_dynamic", ("W8A8_DYNAMIC", "W4A8_DYNAMIC"), seconds=60),
    )  # fmt: skip
}
"""Recipes by name. All but the ``extended`` ones take seconds on the demo model."""


def cache_dir() -> Path:
    """Root of the project's cache (``$MODELSLIM_CACHE_DIR`` or ``~/.cache/vllm-modelslim``)."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "vllm-modelslim"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _runtime_torch_requirement() -> str:
    import torch

    return f"torch=={torch.__version__.split('+')[0]}"


def msmodelslim_python(transformers: str = DEFAULT_TRANSFORMERS, log=print) -> Path:
    """Interpreter of a virtualenv with msmodelslim, creating the virtualenv if needed.

    Args:
        transformers: transformers version to install next to msmodelslim.
        log: callback for one-line progress messages.

    Raises:
        RuntimeError: creating the virtualenv or installing into it failed.
    """
    override = os.environ.get(PYTHON_OVERRIDE_ENV)
    if override:
        return Path(override)
    return tool_python(
        f"msmodelslim-{MSMODELSLIM_VERSION}-tf{transformers}",
        [f"msmodelslim=={MSMODELSLIM_VERSION}", f"transformers=={transformers}"],
        log,
    )


def tool_python(name: str, requirements: list[str], log=print) -> Path:
    """Interpreter of the virtualenv ``<cache>/venvs/<name>``, created with ``requirements`` if needed.

    torch is installed first, at the running process's version (the CPU build
    on these machines), so that the tool's dependencies do not pull another.

    Raises:
        RuntimeError: creating the virtualenv or installing into it failed.
    """
    venv = cache_dir() / "venvs" / name
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    if python.exists() and marker.exists():
        return python
    log(f"creating the virtualenv {venv} (one-time, a minute or more)")
    shutil.rmtree(venv, ignore_errors=True)
    run_command([sys.executable, "-m", "venv", str(venv)], f"create the virtualenv {name}")
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    run_command([*pip, _runtime_torch_requirement()], f"install torch into the virtualenv {name}")
    run_command([*pip, *requirements], f"install {' '.join(requirements)} into its virtualenv")
    marker.write_text("\n".join(requirements) + "\n")
    return python


def run_command(
    cmd: list[str],
    what: str,
    cwd: Path | None = None,
    log_file: Path | None = None,
    env: dict | None = None,
    stdin_text: str = "",
) -> None:
    """Run ``cmd`` (environment ``env``, default inherited; ``stdin_text`` on its standard input).

    Raises:
        RuntimeError: the command failed (with the end of its output).
    """
    if log_file is None:
        result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, input=stdin_text)
        output = (result.stdout or "") + (result.stderr or "")
    else:
        with open(log_file, "w") as out:
            result = subprocess.run(
                cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env, input=stdin_text, text=True
            )
        output = log_file.read_text(errors="replace")
    if result.returncode != 0:
        raise RuntimeError(f"failed to {what} (exit code {result.returncode}):\n{output[-4000:]}")


def write_calibration_file(path: Path, samples: int = 32, max_chars: int = 600) -> Path:
    """Write msmodelslim calibration text (``{"inputs_pretokenized": ...}`` per line).

    The text is the first paragraphs of standard-library docstrings: English
    prose that every machine has, chosen deterministically.
    """
    from vllm_modelslim.examples.tiny_qwen3 import corpus_texts

    texts = [t for t in corpus_texts(min_chars=200) if t.isascii()]
    step = max(1, len(texts) // samples)
    chosen = [texts[i][:max_chars] for i in range(0, step * samples, step)][:samples]
    path.write_text("".join(json.dumps({"inputs_pretokenized": t}) + "\n" for t in chosen))
    return path


def write_equal_length_calibration_file(
    path: Path, model_dir: Path, samples: int = 8, tokens: int = 64
) -> Path:
    """Calibration text whose samples all tokenize to ``tokens`` tokens (FlatQuant's requirement).

    Each sample is the decoded first ``tokens`` tokens of a docstring, kept only
    if both the fast and the slow tokenizer (msmodelslim loads the slow one)
    encode it back to exactly ``tokens`` tokens.

    Raises:
        RuntimeError: not enough such samples.
    """
    from transformers import AutoTokenizer

    from vllm_modelslim.examples.tiny_qwen3 import corpus_texts

    fast = AutoTokenizer.from_pretrained(str(model_dir))
    slow = AutoTokenizer.from_pretrained(str(model_dir), use_fast=False)
    chosen: list[str] = []
    for text in corpus_texts(min_chars=8 * tokens):
        sample = fast.decode(fast(text)["input_ids"][:tokens])
        if len(fast(sample)["input_ids"]) == tokens == len(slow(sample)["input_ids"]):
            chosen.append(sample)
        if len(chosen) == samples:
            break
    if len(chosen) < samples:
        raise RuntimeError(f"found only {len(chosen)} calibration samples of exactly {tokens} tokens")
    path.write_text("".join(json.dumps({"inputs_pretokenized": t}) + "\n" for t in chosen))
    return path


def config_text(recipe: QuantRecipe, dataset: Path) -> str:
    """The recipe's msmodelslim YAML with its calibration dataset set to ``dataset``.

    ``modelslim_v1`` configs name it ``spec.dataset``, ``modelslim_v0`` (old
    pipeline) configs ``spec.calib_dataset``.
    """
    raw = resources.files("vllm_modelslim.examples").joinpath("configs").joinpath(recipe.config).read_text()
    config = yaml.safe_load(raw)
    key = "calib_dataset" if config.get("apiversion") == "modelslim_v0" else "dataset"
    config["spec"][key] = str(dataset)
    return yaml.safe_dump(config, sort_keys=False)


def model_key(model_dir: Path) -> str:
    """A short digest of every file of a model folder (names and contents).

    It keys everything built from the folder (checkpoints, the MoE upcycle).
    """
    digest = hashlib.sha256()
    for name in sorted(p.name for p in Path(model_dir).iterdir() if p.is_file()):
        digest.update(name.encode())
        digest.update(hashlib.sha256((Path(model_dir) / name).read_bytes()).digest())
    return digest.hexdigest()[:12]


def _model_copy(model_dir: Path, dtype: str, work: Path) -> Path:
    if dtype == "bfloat16":
        return model_dir
    import torch
    from transformers import AutoModelForCausalLM

    target = work / f"model-{dtype}"
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=getattr(torch, dtype))
    model.save_pretrained(str(target))
    for path in model_dir.iterdir():
        if path.is_file() and not (target / path.name).exists() and path.suffix != ".safetensors":
            shutil.copy(path, target / path.name)
    return target


def quantize(model_dir: str | Path, recipe: str | QuantRecipe, log=print, force: bool = False) -> Path:
    """Quantize ``model_dir`` with msmodelslim according to ``recipe``; cached.

    Args:
        model_dir: a local Hugging Face checkpoint with tokenizer files.
        recipe: a :data:`RECIPES` name or a :class:`QuantRecipe`.
        log: callback for one-line progress messages.
        force: re-run even if a cached result exists.

    Returns:
        The folder msmodelslim wrote (description, weights, config, tokenizer).

    Raises:
        RuntimeError: msmodelslim failed (the message has the end of its log), or
            its output lacks the expected quant types.
    """
    recipe = RECIPES[recipe] if isinstance(recipe, str) else recipe
    model_dir = Path(model_dir)
    if recipe.practice_quant_type:  # the tool's built-in configuration, fixed by its version
        key = f"{MSMODELSLIM_VERSION}:{recipe.msmodelslim_model_type}:{recipe.practice_quant_type}".encode()
    else:
        key = (
            resources.files("vllm_modelslim.examples")
            .joinpath("configs")
            .joinpath(recipe.config)
            .read_bytes()
        )
    config_digest = hashlib.sha256(key).hexdigest()[:8]
    out = cache_dir() / "checkpoints" / f"{recipe.name}-{model_key(model_dir)}-{config_digest}"
    if (out / ".complete").exists() and not force:
        return out
    python = msmodelslim_python(recipe.transformers, log)
    log(f"quantizing {model_dir.name} with msmodelslim ({recipe.name}, ~{recipe.seconds} s)")
    with tempfile.TemporaryDirectory(prefix="msmodelslim-") as tmp:
        work = Path(tmp)
        if recipe.equal_length_calibration:
            dataset = write_equal_length_calibration_file(work / "calib.jsonl", model_dir)
        else:
            dataset = write_calibration_file(work / "calib.jsonl")
        config = work / "config.yaml"
        if not recipe.practice_quant_type:
            config.write_text(config_text(recipe, dataset))
        source = _model_copy(model_dir, recipe.model_dtype, work)
        partial = out.with_name(out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        cli = Path(python).with_name("msmodelslim")
        command = [str(cli)] if cli.exists() else [str(python), "-m", "msmodelslim"]
        command += [
            "quant",
            "--model_type", recipe.msmodelslim_model_type,
            "--model_path", str(source),
            "--save_path", str(partial),
            "--device", "cpu",
        ]  # fmt: skip
        if recipe.practice_quant_type:
            command += ["--quant_type", recipe.practice_quant_type]
        else:
            command += ["--config_path", str(config)]
        env_log = work / "msmodelslim.log"
        env = None
        if recipe.site_dir:
            site = resources.files("vllm_modelslim.examples").joinpath(recipe.site_dir)
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
            }
        # msmodelslim writes scratch files (features.npy) into the working directory.
        run_command(
            command, f"quantize with msmodelslim ({recipe.name})", cwd=work, log_file=env_log, env=env,
            stdin_text="y\n" if recipe.practice_quant_type else "",
        )  # fmt: skip
        shutil.copy(env_log, partial / "msmodelslim.log")
    description = load_description(partial)
    missing = set(recipe.quant_types) - description.quant_types()
    if missing:
        raise RuntimeError(
            f"msmodelslim finished but {partial} has no {sorted(missing)} layers "
            f"(found {sorted(description.quant_types())}); see msmodelslim.log there"
        )
    if recipe.moe:
        float_experts = sorted(k for k, v in description.entries.items() if ".experts." in k and v == "FLOAT")
        if float_experts or not any(".experts." in k for k in description.entries):
            raise RuntimeError(
                f"msmodelslim finished but left MoE experts unquantized in {partial} "
                f"(e.g. {float_experts[:2]}); its MoE adapter needs transformers {MOE_TRANSFORMERS}"
            )
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    (out / ".complete").write_text(recipe.name + "\n")
    return out
