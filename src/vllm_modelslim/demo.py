"""The main job: quantize the trained demo model with msmodelslim, serve it through vLLM.

``vllm-modelslim demo`` runs the whole path on a fresh machine:

1. take the committed demo model (a ~5M-parameter Qwen3 trained on the
   Python documentation, ``examples/demo_model``);
2. quantize it with the real msmodelslim to W8A8_DYNAMIC, W8A8 (static),
   W8A16, W4A16 and W4A8_DYNAMIC (cached; msmodelslim gets its own virtualenv
   on first use; ``--recipes`` picks others, e.g. ``w4a4_flatquant``);
3. generate greedily with vLLM from the BF16 model and from each quantized
   checkpoint with ``quantization="ascend"``;
4. print the continuations side by side, with how many generated tokens
   agree with the BF16 model's.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

DEFAULT_RECIPES = ("w8a8_dynamic", "w8a8_static", "w8a16", "w4a16", "w4a8_dynamic")
DEFAULT_PROMPTS = (
    "The list data type has",
    "A dictionary is",
    "To open a file for reading,",
    "If the path is",
)


@dataclass
class SchemeRun:
    """Generations of one checkpoint."""

    label: str
    folder: Path
    texts: list[str]
    token_ids: list[list[int]]
    seconds: float
    top1_on_baseline: list[list[int]] | None = None


def _generate(
    folder: Path,
    quantization: str | None,
    prompts: list[list[int]],
    max_tokens: int,
    dtype: str,
    baseline: list[list[int]] | None,
):
    """Greedy generations, plus top-1 predictions along the baseline's sequences (teacher forcing)."""
    from vllm_modelslim.examples.vllm_runner import close_llm, greedy_generate, make_llm, prompt_top1

    llm = make_llm(folder, quantization, dtype=dtype)
    start = time.perf_counter()
    generations = greedy_generate(llm, prompts, max_tokens)
    seconds = time.perf_counter() - start
    top1 = prompt_top1(llm, baseline) if baseline else None
    close_llm(llm)
    return generations, seconds, top1


def run_demo(
    recipes: tuple[str, ...] = DEFAULT_RECIPES,
    prompts: tuple[str, ...] = DEFAULT_PROMPTS,
    max_tokens: int = 24,
    dtype: str = "bfloat16",
    console: Console | None = None,
) -> list[SchemeRun]:
    """Run the demo and print its report; returns the generations per checkpoint.

    Raises:
        RuntimeError: msmodelslim or vLLM failed (the message says which step).
    """
    from transformers import AutoTokenizer

    from vllm_modelslim.examples.msmodelslim_runner import quantize
    from vllm_modelslim.examples.tiny_qwen3 import demo_model_dir
    from vllm_modelslim.format.description import load_description

    console = console or Console()
    log = console.log
    model_dir = demo_model_dir()
    log(f"demo model: {model_dir}")
    checkpoints: list[tuple[str, Path]] = []
    for recipe in recipes:
        with console.status(f"[bold]Quantizing with msmodelslim: {recipe} (cached after the first run)"):
            folder = quantize(model_dir, recipe, log=log)
        quant_types = sorted(load_description(folder).quant_types() - {"FLOAT"})
        checkpoints.append((f"{'/'.join(quant_types)} ({recipe})", folder))
        log(f"{recipe}: {folder}")

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
    runs: list[SchemeRun] = []
    baseline: list[list[int]] | None = None
    for label, folder, quantization in [("BF16", model_dir, None)] + [
        (label, folder, "ascend") for label, folder in checkpoints
    ]:
        what = "unquantized" if quantization is None else 'quantization="ascend"'
        with console.status(f"[bold]vLLM: {label} ({what}), the engine takes ~30 s to start"):
            generations, seconds, top1 = _generate(
                folder, quantization, prompt_ids, max_tokens, dtype, baseline
            )
        texts = [g.text for g in generations]
        runs.append(SchemeRun(label, folder, texts, [g.token_ids for g in generations], seconds, top1))
        if baseline is None:
            baseline = [g.prompt_ids + g.token_ids for g in generations]
        log(f"{label}: generated {len(prompts)}x{max_tokens} tokens in {seconds:.2f} s")
    _print_report(console, prompts, runs)
    return runs


def _agreement(tokens: list[int], baseline: list[int]) -> int:
    """Number of leading tokens equal to the baseline's (greedy sequences branch once)."""
    same = 0
    for a, b in zip(tokens, baseline, strict=False):
        if a != b:
            break
        same += 1
    return same


def _print_report(console: Console, prompts: tuple[str, ...], runs: list[SchemeRun]) -> None:
    baseline = runs[0]
    for index, prompt in enumerate(prompts):
        table = Table(title=f"Prompt: {prompt!r}", show_lines=True, title_justify="left")
        table.add_column("model", style="bold", no_wrap=True)
        table.add_column("greedy continuation (vLLM)")
        table.add_column("same as BF16", justify="right", no_wrap=True)
        for run in runs:
            same = _agreement(run.token_ids[index], baseline.token_ids[index])
            total = len(baseline.token_ids[index])
            table.add_row(run.label, run.texts[index], f"{same}/{total}")
        console.print(table)
    summary = Table(title="Agreement with the BF16 model", title_justify="left")
    summary.add_column("checkpoint", style="bold")
    summary.add_column("greedy tokens equal to BF16\n(until the first difference)", justify="right")
    summary.add_column("top-1 = BF16's token\n(on BF16's continuation)", justify="right")
    total = sum(len(b) for b in baseline.token_ids)
    for run in runs[1:]:
        same = sum(_agreement(t, b) for t, b in zip(run.token_ids, baseline.token_ids, strict=True))
        top1 = _top1_agreement(run, baseline)
        summary.add_row(
            run.label, f"{same}/{total} ({same / total:.0%})", f"{top1}/{total} ({top1 / total:.0%})"
        )
    console.print(summary)
    console.print("checkpoints: " + ", ".join(f"{run.label}: {run.folder}" for run in runs))


def _top1_agreement(run: SchemeRun, baseline: SchemeRun) -> int:
    """Generated positions where ``run`` predicts BF16's token given BF16's own prefix."""
    agree = 0
    for predicted, generated in zip(run.top1_on_baseline or [], baseline.token_ids, strict=True):
        continuation = predicted[len(predicted) - len(generated) :]
        agree += sum(a == b for a, b in zip(continuation, generated, strict=True))
    return agree


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``vllm-modelslim demo``."""
    import argparse

    parser = argparse.ArgumentParser(prog="vllm-modelslim demo", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--recipes", nargs="+", default=list(DEFAULT_RECIPES), help="msmodelslim recipes to run"
    )
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    run_demo(tuple(args.recipes), max_tokens=args.max_tokens, dtype=args.dtype)
    return 0
