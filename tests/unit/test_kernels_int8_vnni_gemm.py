"""The project's exact int8 GEMM (``cpu_int8_vnni``) against ``torch._int_mm``, bit for bit.

The op returns ``float32(Σ_k x_q·w_q + b_int)``, the same value ``torch._int_mm`` plus the int32 bias
gives, and the shared epilogue does the rest; so every output must be the same bits as the
``torch_int_mm`` kernel's (a byte-order slip in the packing, a lost row block, a wrong compensation,
a bias applied twice or not at all fails). Static W8A8 layers (``quant_bias``) select it where it
builds; real checkpoint tensors: ``tests/checkpoints/test_w8a8_static_kernel_facts.py``.
"""

import logging
import uuid

import pytest
import torch
from no_compiler import run_without_a_compiler
from test_kernels_scaled_int8_mm_static import static_case

from vllm_modelslim.kernels.scaled_int8_mm import (
    CpuInt8VnniScaledInt8MM,
    ScaledInt8MMConfig,
    TorchIntMMScaledInt8MM,
    make_scaled_int8_mm,
)
from vllm_modelslim.kernels.scaled_int8_mm.cpu_int8_vnni import ops_unavailable, pack_int8_vnni, wrap_int32

ISA_MISSING = CpuInt8VnniScaledInt8MM.is_supported("cpu")[1]
WHY_NOT = ISA_MISSING or ops_unavailable()  # the ISA, then the C++ build
needs_kernel = pytest.mark.skipif(WHY_NOT is not None, reason=f"cpu_int8_vnni: {WHY_NOT}")


@needs_kernel
@pytest.mark.parametrize(
    "m,k,n,offset,remainder",
    [
        (1, 16, 16, 0, 0),
        (1, 2048, 96, 5, 0),
        (3, 256, 48, -128, 150_000),
        (8, 512, 32, 127, 3),
        (9, 64, 16, 37, 0),
        (17, 1024, 64, -20, 1000),
        (70, 128, 32, 0, 0),
    ],
)
@pytest.mark.parametrize("with_bias", [True, False])
def test_same_bits_as_int_mm(m, k, n, offset, remainder, with_bias):
    x_q, w_q, deq_scale, quant_bias = static_case(m, k, n, offset, remainder, seed=m + k)
    int_bias = quant_bias if with_bias else None
    ours = make_scaled_int8_mm(w_q, deq_scale, int_bias, kernel=CpuInt8VnniScaledInt8MM)
    int_mm = make_scaled_int8_mm(w_q, deq_scale, int_bias, kernel=TorchIntMMScaledInt8MM)
    g = torch.Generator().manual_seed(1)
    x_scale, bias = torch.rand(m, generator=g) + 0.5, torch.randn(n, generator=g)
    for out_dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert torch.equal(ours(x_q, None, None, out_dtype), int_mm(x_q, None, None, out_dtype)), out_dtype
    assert torch.equal(ours(x_q, x_scale, bias, torch.float32), int_mm(x_q, x_scale, bias, torch.float32))


@needs_kernel
def test_int8_extremes_and_a_wrapping_bias():
    """|Σ x·w| at its int8 limits (beyond float32's integers), and an int32 bias that overflows: the
    int32 sum wraps exactly as torch's int32 addition of the bias does."""
    k, n = 4096, 16
    x_q = torch.full((3, k), -128, dtype=torch.int8)
    x_q[1] = 127
    x_q[2, ::2] = 127
    w_q = torch.full((n, k), -128, dtype=torch.int8)
    w_q[1::2, 1::2] = 127
    for int_bias in (torch.zeros(n, dtype=torch.int32), torch.full((n,), 2**31 - 5, dtype=torch.int32)):
        ours = make_scaled_int8_mm(w_q, torch.ones(n), int_bias, kernel=CpuInt8VnniScaledInt8MM)
        int_mm = make_scaled_int8_mm(w_q, torch.ones(n), int_bias, kernel=TorchIntMMScaledInt8MM)
        assert torch.equal(ours(x_q, None, None, torch.float64), int_mm(x_q, None, None, torch.float64))
    wrapped = 128 * 128 * k + (2**31 - 5) - 2**32  # int32 wrap, then the float32 conversion
    assert ours(x_q, None, None, torch.float64)[0, 0].item() == torch.tensor(wrapped).float().item()


def test_packing_layout_and_wrap():
    w = torch.arange(32 * 16).reshape(32, 16).remainder(251).sub(125).to(torch.int8)
    packed = pack_int8_vnni(w)
    assert packed.shape == (2, 4, 64)
    for tile, kq, j, t in [(0, 0, 0, 0), (1, 3, 15, 3), (0, 2, 7, 1)]:
        assert packed[tile, kq, 4 * j + t] == w[16 * tile + j, 4 * kq + t]
    with pytest.raises(ValueError, match="multiples of 16"):
        pack_int8_vnni(torch.zeros(16, 24, dtype=torch.int8))
    values = torch.tensor([2**31, -(2**31) - 1, 5, 2**32 + 7])
    assert wrap_int32(values).tolist() == [-(2**31), 2**31 - 1, 5, 7]


@pytest.mark.parametrize(
    "config,why",
    [
        (ScaledInt8MMConfig(256, 24), "multiples of 16"),
        (ScaledInt8MMConfig(250, 32), "multiples of 16"),
        (ScaledInt8MMConfig(256, 32, group_size=64), "per-group"),
    ],
)
def test_layers_it_cannot_run_are_refused(config, why):
    ok, reason = CpuInt8VnniScaledInt8MM.can_implement(config)
    assert not ok and why in reason


@needs_kernel
def test_static_layers_select_it_and_log_it(caplog):
    caplog.set_level(logging.INFO, logger="vllm_modelslim.kernels")
    _, w_q, deq_scale, quant_bias = static_case(1, 64, 16, offset=5, remainder=0, seed=0)
    tag = f"W8A8-{uuid.uuid4().hex[:8]}"
    assert isinstance(make_scaled_int8_mm(w_q, deq_scale, quant_bias, label=tag), CpuInt8VnniScaledInt8MM)
    (line,) = [r.getMessage() for r in caplog.records if tag in r.getMessage()]
    assert line.startswith(
        f"Selected kernel cpu_int8_vnni for {tag} (scaled int8 GEMM, per-channel scales, int32"
    )


@needs_kernel
def test_traced_with_a_symbolic_row_count():
    x_q, w_q, deq_scale, quant_bias = static_case(1, 128, 32, offset=3, remainder=0, seed=2)
    kernel = make_scaled_int8_mm(w_q, deq_scale, quant_bias, kernel=CpuInt8VnniScaledInt8MM)
    compiled = torch.compile(lambda x: kernel(x, None, None, torch.bfloat16), dynamic=True, fullgraph=True)
    for rows in (1, 5, 33):
        x = torch.randint(
            -128, 128, (rows, 128), dtype=torch.int8, generator=torch.Generator().manual_seed(rows)
        )
        assert torch.equal(compiled(x), kernel(x, None, None, torch.bfloat16))


@pytest.mark.skipif(ISA_MISSING is not None, reason=f"cpu_int8_vnni: {ISA_MISSING}")
def test_a_host_that_cannot_build_falls_back_with_the_reason(tmp_path):
    """No working compiler: the op is skipped with the build error and the next kernel runs the layer."""
    run = run_without_a_compiler(
        tmp_path,
        "from vllm_modelslim.kernels.scaled_int8_mm import make_scaled_int8_mm\n"
        "k = make_scaled_int8_mm(torch.zeros(32, 64, dtype=torch.int8), torch.ones(32),"
        " torch.ones(32, dtype=torch.int32), label='W8A8')\n"
        "print('chosen:', k.name)\n",
    )
    assert "chosen: cpu_int8_vnni" not in run.stdout
    assert "skipped: cpu_int8_vnni (could not build int8_vnni_gemm.cpp" in run.stderr
