"""``vllm-modelslim`` console command."""

from __future__ import annotations

import sys

COMMANDS = {
    "demo": "build the demo model, quantize it with msmodelslim, run it in vLLM with quantization='ascend'",
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
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
