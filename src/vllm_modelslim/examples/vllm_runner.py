"""Small helpers to run a checkpoint through vLLM's offline ``LLM`` API on CPU.

Defaults suit the demo model on a small CPU host: eager mode, an explicit KV
cache size (vLLM-CPU otherwise reserves a fraction of host RAM), short
context, fixed seed.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_KV_CACHE_BYTES = 256 * 2**20


@dataclass
class Generation:
    """One greedy generation: prompt ids, generated ids and their log-probabilities.

    ``cached_tokens``: prompt tokens vLLM read from its prefix cache instead of computing.
    """

    prompt_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]
    text: str
    cached_tokens: int = 0


THREADS_BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"


def cpu_threads_bind(ranks: int, cpus: list[int] | None = None) -> str:
    """A ``VLLM_CPU_OMP_THREADS_BIND`` value giving each of ``ranks`` CPU workers its own cores.

    vLLM-CPU's default (``auto``) binds each tensor-parallel rank to its own NUMA
    node and fails on a host with fewer nodes than ranks; this splits the CPUs
    this process may use into ``ranks`` contiguous runs instead (``"0|1"`` for two
    ranks on two cores, ``"0-7|8-15"`` on sixteen).

    Args:
        ranks: CPU workers (tensor × pipeline parallel size).
        cpus: the CPU ids to split (default: this process's affinity).

    Raises:
        ValueError: fewer CPUs than ranks.
    """
    cpus = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
    if ranks < 1 or len(cpus) < ranks:
        raise ValueError(f"cannot give {ranks} CPU workers a core each from CPUs {cpus}")
    share = len(cpus) // ranks
    runs = [cpus[r * share : (r + 1) * share] for r in range(ranks)]
    return "|".join(",".join(str(c) for c in run) for run in runs)


def make_llm(
    model: str | Path,
    quantization: str | None = "ascend",
    dtype: str = "bfloat16",
    max_model_len: int = 512,
    **overrides: Any,
):
    """A ``vllm.LLM`` for ``model`` with CPU-friendly defaults.

    With ``tensor_parallel_size`` above 1 the workers run in processes
    (``distributed_executor_backend="mp"``) and, unless ``VLLM_CPU_OMP_THREADS_BIND``
    is already set, each rank is bound to its own share of the CPUs
    (:func:`cpu_threads_bind`; this sets the variable for the process).

    Args:
        model: checkpoint folder.
        quantization: ``"ascend"`` for ModelSlim checkpoints, None for float models.
        dtype: activation dtype (``"bfloat16"``, ``"float16"``, ``"float32"``).
        max_model_len: context length (small keeps the KV cache small).
        overrides: any other ``LLM``/``EngineArgs`` keyword.
    """
    from vllm import LLM

    kwargs: dict[str, Any] = dict(
        model=str(model),
        quantization=quantization,
        dtype=dtype,
        enforce_eager=True,
        kv_cache_memory_bytes=DEFAULT_KV_CACHE_BYTES,
        max_model_len=max_model_len,
        max_num_seqs=16,
        seed=0,
    )
    kwargs.update(overrides)
    ranks = int(kwargs.get("tensor_parallel_size", 1)) * int(kwargs.get("pipeline_parallel_size", 1))
    if ranks > 1:
        kwargs.setdefault("distributed_executor_backend", "mp")
        if not os.environ.get(THREADS_BIND_ENV):
            os.environ[THREADS_BIND_ENV] = cpu_threads_bind(ranks)
    return LLM(**kwargs)


def close_llm(llm) -> None:
    """Drop an ``LLM`` and collect it, so that the next one can start in this process."""
    engine = getattr(llm, "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    del llm
    gc.collect()


def reset_after_failed_start() -> None:
    """Tear down the parallel state an in-process engine left behind when it failed to start.

    A failed ``LLM(...)`` keeps vLLM's process groups; the next engine in the
    process would reuse them (and, for a MoE model, miss the expert-parallel group).
    """
    from vllm.distributed import cleanup_dist_env_and_memory

    cleanup_dist_env_and_memory()
    gc.collect()


def greedy_generate(llm, prompts: list[list[int]], max_tokens: int) -> list[Generation]:
    """Greedy continuations of token-id prompts, with each chosen token's log-probability."""
    from vllm import SamplingParams, TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=1, ignore_eos=True)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    generations = []
    for prompt, output in zip(prompts, outputs, strict=True):
        completion = output.outputs[0]
        ids = list(completion.token_ids)
        logprobs = [float(step[token].logprob) for token, step in zip(ids, completion.logprobs, strict=True)]
        cached = output.num_cached_tokens or 0
        generations.append(Generation(list(prompt), ids, logprobs, completion.text, cached))
    return generations


def prompt_scores(llm, sequences: list[list[int]]) -> list[list[tuple[float, int]]]:
    """Teacher-forced scores at positions 1..T-1: ``(log p(actual token), top-1 token id)`` per position."""
    from vllm import SamplingParams, TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=1)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=s) for s in sequences], params, use_tqdm=False)
    result = []
    for sequence, output in zip(sequences, outputs, strict=True):
        steps = output.prompt_logprobs[1:]
        result.append(
            [
                (float(step[token].logprob), max(step.items(), key=lambda kv: kv[1].logprob)[0])
                for token, step in zip(sequence[1:], steps, strict=True)
            ]
        )
    return result


def prompt_top1(llm, sequences: list[list[int]]) -> list[list[int]]:
    """For each sequence, vLLM's top-1 prediction at positions 1..T-1 (teacher forcing)."""
    return [[top1 for _, top1 in scores] for scores in prompt_scores(llm, sequences)]
