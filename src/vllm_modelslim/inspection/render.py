"""Render a :class:`~vllm_modelslim.inspection.report.CheckpointReport` as rich tables.

Everything taken from the checkpoint (folder, tensor and layer names, settings,
messages) is escaped: rich would read ``[bold]`` or ``[/]`` in a name as markup
and fail or drop text.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vllm_modelslim.inspection.report import CheckpointReport


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.2f} MiB"


def render_report(report: CheckpointReport, console: Console | None = None) -> None:
    """Print the report: summary, layer patterns, tensors, bytes, problems."""
    console = console or Console()
    console.print(f"[bold]{escape(report.folder)}[/bold]")
    console.print(
        f"format: {escape(report.format)}   model_type: {escape(str(report.model_type))}   "
        f"description: {escape(report.description_file or '-')}"
    )
    if report.settings:
        console.print(f"settings: {escape(str(report.settings))}")

    if report.layers:
        layers = Table(title="layers by pattern")
        for column in ("pattern", "type", "quant type", "scheme", "count", "indices"):
            layers.add_column(column, overflow="fold")
        for group in report.pattern_table():
            layers.add_row(
                escape(group["pattern"]),
                escape(group["layer_type"]),
                escape(group["quant_type"]),
                escape(group["scheme"] or "-"),
                str(group["count"]),
                escape(group["indices"]),
            )
        console.print(layers)

    if report.tensors_by_quant_type:
        tensors = Table(title="description entries per quant type")
        tensors.add_column("quant type")
        tensors.add_column("tensors", justify="right")
        for quant_type, count in sorted(report.tensors_by_quant_type.items()):
            tensors.add_row(escape(quant_type), str(count))
        console.print(tensors)

    sizes = Table(title=f"stored bytes by dtype ({report.num_tensors} tensors)")
    sizes.add_column("dtype")
    sizes.add_column("bytes", justify="right")
    for dtype, nbytes in report.bytes_by_dtype.items():
        sizes.add_row(escape(dtype), _mib(nbytes))
    sizes.add_row("total", _mib(report.stored_bytes))
    console.print(sizes)
    stored, bf16 = report.quantized_layer_bytes()
    if bf16:
        console.print(
            f"quantized layers: {_mib(stored)} stored vs {_mib(bf16)} as BF16 weights "
            f"= {stored / bf16:.3f}× BF16 (weights, scales and offsets; embeddings and FLOAT layers excluded)"
        )

    if report.problems:
        count = len(report.problems)
        console.print(f"[bold red]{count} problem(s): the checkpoint would not load[/bold red]")
        for problem in report.problems:
            console.print(f"  [red]{escape(problem.kind)}[/red]: {escape(str(problem))}", highlight=False)
    else:
        checked = "headers and scale/offset values" if report.values_checked else "headers"
        console.print(f"[bold green]no problems found[/bold green] ({checked} checked)")
