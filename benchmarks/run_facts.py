"""What a benchmark run reports besides speed: the host's ISA, memory of the process (tree), kernels chosen.

Memory, on Linux (``/proc``):

* :func:`peak_rss_bytes`: ``VmHWM`` of this process, the high-water mark of
  its own address space. Unlike ``getrusage(RUSAGE_SELF).ru_maxrss`` it starts
  afresh in a spawned process: Linux carries ``ru_maxrss`` across ``execve``,
  so a worker spawned by a parent holding 2 GiB reports at least 2 GiB
  whatever it does (every quantized run of ``decode_speed.py`` used to print
  its parent's 2027.4 MiB).
* :func:`tree_rss_bytes`: the resident set of this process plus its
  descendants right now (compile workers, vLLM engine or worker processes
  when vLLM runs them out of process). Pages shared between them are counted
  once per process, so this is an upper bound.
* :class:`TreeRssSampler`: the largest :func:`tree_rss_bytes` seen by a
  background thread (every ``interval`` seconds, so a shorter spike can be
  missed).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path

ISA_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimddp",
    "i8mm",
)
"""CPU flags that decide which CPU kernels can run (x86 AVX2/AVX-512/VNNI/AMX, Arm dot product)."""


def _status_kib(field: str, status_text: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+)\s+kB", status_text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc status has no {field} line")
    return int(match.group(1))


def peak_rss_bytes(pid: int | str = "self") -> int:
    """Peak resident set of one process since it was exec'd (``VmHWM`` of ``/proc/<pid>/status``).

    Raises:
        RuntimeError: no ``/proc`` status with ``VmHWM`` (not Linux).
    """
    return _status_kib("VmHWM", Path(f"/proc/{pid}/status").read_text()) * 1024


def tree_rss_bytes(pid: int | None = None) -> int:
    """Resident set of process ``pid`` (default: this one) and all its descendants, now, in bytes.

    Processes that exit while being read are skipped.
    """
    import psutil

    root = psutil.Process(pid or os.getpid())
    total = root.memory_info().rss
    for child in root.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            continue
    return total


class TreeRssSampler:
    """Largest :func:`tree_rss_bytes` of this process, sampled by a daemon thread between start and stop."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, tree_rss_bytes())
            if self._stop.wait(self.interval):
                return

    def start(self) -> TreeRssSampler:
        self._thread.start()
        return self

    def stop(self) -> int:
        """Stop sampling (after one last sample) and return the peak in bytes."""
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss_bytes())
        return self.peak


def host_isa(flags: frozenset[str] | None = None) -> str:
    """One line on the host CPU for a benchmark header: model, :data:`ISA_FLAGS` present, what follows.

    Args:
        flags: CPU flags (default: ``/proc/cpuinfo``'s, via ``kernels/platform.py``; then
            the AMX answer is torch's runtime check, as for kernel selection).

    Returns:
        e.g. ``"AMD EPYC 9B14; avx2 avx512f avx512_vnni avx512_bf16; int8 dot: yes; AMX tiles: no;
        torch CPU capability: AVX512"``.
    """
    import torch

    from vllm_modelslim.kernels.platform import INT8_DOT_CPU_FLAGS, cpu_flags, cpu_has_amx_tiles

    detected = cpu_flags() if flags is None else flags
    present = " ".join(flag for flag in ISA_FLAGS if flag in detected) or "none of " + "/".join(ISA_FLAGS)
    int8_dot = any(flag in detected for flag in INT8_DOT_CPU_FLAGS)
    amx = cpu_has_amx_tiles() if flags is None else "amx_tile" in detected
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
                break
    except OSError:
        pass
    return (
        f"{model}; {present}; int8 dot: {'yes' if int8_dot else 'no'}; AMX tiles: {'yes' if amx else 'no'}; "
        f"torch CPU capability: {torch.backends.cpu.get_cpu_capability()}"
    )


_SELECTED = re.compile(r"^Selected kernel (\S+) for (.+?)(?:; skipped: .*)?$")


class KernelChoices(logging.Handler):
    """Collects the plugin's "Selected kernel K for P" lines (``vllm_modelslim.kernels`` logger).

    Use as a context manager: it attaches itself and sets that logger to INFO
    (whatever vLLM's logging level), and restores the level on exit.
    """

    LOGGER = "vllm_modelslim.kernels"

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.choices: list[tuple[str, str]] = []
        self._old_level = logging.NOTSET

    def emit(self, record: logging.LogRecord) -> None:
        match = _SELECTED.match(record.getMessage())
        if match and (match.group(2), match.group(1)) not in self.choices:
            self.choices.append((match.group(2), match.group(1)))

    def __enter__(self) -> KernelChoices:
        logger = logging.getLogger(self.LOGGER)
        self._old_level = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logger = logging.getLogger(self.LOGGER)
        logger.removeHandler(self)
        logger.setLevel(self._old_level)

    def summary(self) -> str:
        """``"purpose: kernel; ..."`` in the order chosen, or ``"vLLM's own"`` when none was logged."""
        return "; ".join(f"{purpose}: {kernel}" for purpose, kernel in self.choices) or "vLLM's own"
