"""``vllm-modelslim`` console command."""

from __future__ import annotations

import argparse
import json
import sys

COMMANDS = {
    "demo": "build the demo model, quantize it with msmodelslim, run it in vLLM with quantization='ascend'",
    "inspect": "check a checkpoint folder from its headers: layers, tensors, sizes, every problem found",
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``vllm-modelslim <command> [args]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: vllm-modelslim <command> [options]\n\ncommands:")
        for name, text in COMMANDS.items():
            print(f"  {name:<8} {text}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    if command == "demo":
        from vllm_modelslim.demo import main as demo_main

        return demo_main(rest)
    if command == "inspect":
        return inspect_main(rest)
    return 2


def inspect_main(argv: list[str]) -> int:
    """``vllm-modelslim inspect DIR [--json] [--headers-only]``.

    Returns:
        0 when the folder would load, 1 when problems were found, 2 on usage errors.
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
    args = parser.parse_args(argv)
    from vllm_modelslim.inspection import inspect_checkpoint

    report = inspect_checkpoint(args.folder, read_values=not args.headers_only)
    if args.json:
        print(json.dumps(report.to_json(), indent=2, default=str))
    else:
        from vllm_modelslim.inspection.render import render_report

        render_report(report)
    return 0 if report.loadable else 1


if __name__ == "__main__":
    raise SystemExit(main())
