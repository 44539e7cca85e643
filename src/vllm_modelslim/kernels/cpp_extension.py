"""Build (once, cached) and load the project's own C++ CPU kernels in ``kernels/csrc``.

The sources ship with the package, register their ops with torch's dispatcher
(``TORCH_LIBRARY``: called from C++, no Python frame per call) and are
compiled on first use with torch's ``cpp_extension`` (a C++17 compiler and ninja are needed; ``ninja`` comes
with the project's dependencies). The build goes to
``$MODELSLIM_CACHE_DIR/torch_extensions/`` (default
``~/.cache/vllm-modelslim``), keyed by Python, torch and the source's hash, so
a later process loads it in milliseconds. A host that cannot build gets a
reason, not an exception: the kernel that needs the extension reports itself
unsupported and the selection moves on to the next kernel.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from vllm_modelslim.kernels.platform import cpu_flags

CSRC = Path(__file__).parent / "csrc"
CACHE_ENV = "MODELSLIM_CACHE_DIR"
_LOCK = threading.Lock()
_FAKES_REGISTERED: set[str] = set()


def isa_reason(device_type: str, flags: tuple[str, ...]) -> str | None:
    """Why code compiled for ``flags`` (``/proc/cpuinfo`` names) cannot run on ``device_type``, or None."""
    if device_type != "cpu":
        return "a CPU kernel"
    missing = [flag for flag in flags if flag not in cpu_flags()]
    return f"its AVX-512 code needs {', '.join(missing)}" if missing else None


def require_cpu_ops(reason: str | None) -> None:
    """Raise ``RuntimeError(reason)`` unless ``reason`` (from :func:`load_cpu_ops`) is None."""
    if reason is not None:
        raise RuntimeError(reason)


class CompiledCpuOpsMixin:
    """Kernel class attributes shared by the wrappers of the project's C++ ops (put before the family's base).

    The subclass names the x86 flags its code executes (``cpu_flags``) and the
    function that builds and loads its ops (``ops_unavailable``, a staticmethod
    returning the reason they cannot be had, or None). ``is_supported`` checks
    the ISA only; the subclass's ``can_implement`` ends with :meth:`ops_reason`,
    so the ops are built only once a layer they could run asks for them.
    """

    device_types = frozenset({"cpu"})
    cpu_flags: tuple[str, ...] = ()

    @staticmethod
    def ops_unavailable() -> str | None:
        """Why the ops cannot be built or loaded here, or None (the subclass's loader)."""
        raise NotImplementedError

    @classmethod
    def is_supported(cls, device_type: str) -> tuple[bool, str | None]:
        """Whether the ops' code can execute on ``device_type`` on this host."""
        reason = isa_reason(device_type, cls.cpu_flags)
        return reason is None, reason

    @classmethod
    def ops_reason(cls) -> tuple[bool, str | None]:
        """``(True, None)`` once the ops are built and loaded, else ``(False, why)``."""
        reason = cls.ops_unavailable()
        return reason is None, reason


def extension_build_dir(source: Path) -> Path:
    """Where ``source``'s build lives: one folder per Python, torch and hash of the source and headers."""
    import torch

    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "vllm-modelslim")
    digest = hashlib.sha256(source.read_bytes())
    for header in sorted(source.parent.glob("*.h")):  # the shared headers the sources include
        digest.update(header.read_bytes())
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    tag = f"{python}-torch{torch.__version__}-{digest.hexdigest()[:12]}"
    return root / "torch_extensions" / source.stem / tag


def load_cpu_ops(
    source_name: str, flags: tuple[str, ...], fakes: Mapping[str, Callable] | None = None
) -> str | None:
    """:func:`load_cpu_extension`, then (once, on success) the ops' fake implementations for torch.compile.

    Thread-safe: layers may be built from several threads.

    Args:
        source_name: a file in ``kernels/csrc``.
        flags: extra compiler flags.
        fakes: ``"namespace::op"`` → its shape-only implementation (``torch.library.register_fake``).

    Returns:
        None once the ops are loaded, else the reason (cached per process and source).
    """
    with _LOCK:
        reason = load_cpu_extension(source_name, flags)
        if reason is None and source_name not in _FAKES_REGISTERED:
            import torch

            for op, fake in (fakes or {}).items():
                torch.library.register_fake(op)(fake)
            _FAKES_REGISTERED.add(source_name)
        return reason


@functools.cache
def load_cpu_extension(source_name: str, flags: tuple[str, ...]) -> str | None:
    """Build and load ``csrc/<source_name>``, whose ops register themselves with torch (``TORCH_LIBRARY``).

    Args:
        source_name: a file in ``kernels/csrc``.
        flags: extra compiler flags (e.g. the ISA the source's intrinsics need).

    Returns:
        None once the library is loaded (its ops are then under ``torch.ops``),
        or a one-line reason why the build or load failed. Cached per process.
    """
    source = CSRC / source_name
    if not source.is_file():
        return f"{source} is missing"
    try:
        from torch.utils.cpp_extension import load

        build_dir = extension_build_dir(source)
        build_dir.mkdir(parents=True, exist_ok=True)
        load(
            name=f"vllm_modelslim_{source.stem}",
            sources=[str(source)],
            extra_cflags=["-O3", "-fopenmp", "-ffp-contract=off", *flags],
            extra_ldflags=["-fopenmp"],
            build_directory=str(build_dir),
            is_python_module=False,
            verbose=False,
        )
        return None
    except Exception as error:  # noqa: BLE001  (a compiler/ninja/linker failure of any kind)
        lines = str(error).strip().splitlines() or [type(error).__name__]
        compiler_error = next((line for line in lines if "error:" in line), lines[0])
        return f"could not build {source_name}: {compiler_error.strip()}"
