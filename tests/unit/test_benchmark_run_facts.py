"""benchmarks/run_facts.py: the memory figures, ISA line and kernel list decode_speed.py prints."""

from __future__ import annotations

import logging
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from run_facts import KernelChoices, host_isa, tree_rss_bytes  # noqa: E402
from vllm_modelslim.kernels.weight_only import make_weight_only_int8  # noqa: E402

MiB = 2**20
linux_only = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")


def _touched(size: int) -> bytearray:
    buffer = bytearray(size)
    for i in range(0, size, 4096):
        buffer[i] = 1
    return buffer


CHILD_PEAKS = """
import resource, sys
sys.path.insert(0, sys.argv[1])
from run_facts import peak_rss_bytes
before = peak_rss_bytes()
buffer = bytearray(128 * 2**20)
buffer[::4096] = b"x" * len(buffer[::4096])
print(before, peak_rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""
"""In a fresh interpreter: VmHWM before and after touching 128 MiB, and ru_maxrss (bytes)."""


@linux_only
def test_a_child_interpreter_peak_is_its_own_not_the_parents():
    parent_buffer = _touched(384 * MiB)
    output = subprocess.run(
        [sys.executable, "-c", CHILD_PEAKS, str(BENCHMARKS)], capture_output=True, text=True, check=True
    ).stdout
    del parent_buffer
    before, after, ru_maxrss = (int(v) for v in output.split())
    # ru_maxrss carries the parent's RSS across the child's exec: the bug decode_speed.py had.
    assert ru_maxrss >= 384 * MiB
    assert before < 128 * MiB  # the child's own interpreter, not the parent's 384 MiB
    assert after - before >= 120 * MiB  # the child's own allocation shows


@linux_only
def test_tree_rss_counts_a_child_process():
    code = (
        "import sys; b = bytearray(160 * 2**20); b[::4096] = b'x' * len(b[::4096]); "
        "print('ok', flush=True); sys.stdin.read()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "ok"
        with_child = tree_rss_bytes()
        own = tree_rss_bytes(child.pid)
    finally:
        child.communicate("")
    without_child = tree_rss_bytes()
    assert own >= 160 * MiB
    assert with_child - without_child >= 150 * MiB


def test_kernel_choices_lists_what_the_plugin_selected():
    tag = f"test-{uuid.uuid4().hex[:8]}"
    g = torch.Generator().manual_seed(0)
    w_q = torch.randint(-128, 128, (32, 64), dtype=torch.int8, generator=g)
    scale = torch.rand(32, generator=g) * 0.01 + 1e-3
    kernels_logger = logging.getLogger(KernelChoices.LOGGER)
    level = kernels_logger.level
    with KernelChoices() as choices:
        kernel = make_weight_only_int8(w_q, scale, None, torch.float32, label=tag)
    assert kernels_logger.level == level and choices not in kernels_logger.handlers
    mine = [(purpose, name) for purpose, name in choices.choices if tag in purpose]
    assert mine == [(f"{tag} (weight-only int8 GEMM, per-channel scales)", type(kernel).name)]
    assert f"{tag} (weight-only int8 GEMM, per-channel scales): {type(kernel).name}" in choices.summary()
    assert KernelChoices().summary() == "vLLM's own"


def test_host_isa_names_the_flags_and_what_they_allow():
    avx2 = host_isa(frozenset({"fma", "avx2"}))
    assert "; avx2; int8 dot: no; AMX tiles: no;" in avx2
    vnni = host_isa(frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}))
    assert "; avx2 avx512f avx512_vnni avx512_bf16; int8 dot: yes; AMX tiles: no;" in vnni
    amx = host_isa(frozenset({"avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8", "amx_bf16"}))
    assert "amx_tile amx_int8 amx_bf16; int8 dot: yes; AMX tiles: yes;" in amx
    assert f"torch CPU capability: {torch.backends.cpu.get_cpu_capability()}" in host_isa()
