"""Row-count dispatch of the CPU weight-only kernels: both paths, block GEMM, torch.compile without guards."""

import pytest
import torch
from kernel_bounds import assert_within, weight_only_expectation

from vllm_modelslim.kernels import float_gemm
from vllm_modelslim.kernels.float_gemm import float32_gemm_by_blocks
from vllm_modelslim.kernels.weight_only import (
    CpuInt4PackWeightOnlyInt4,
    Int8PackWeightOnlyInt8,
    make_weight_only_int4,
    make_weight_only_int8,
    weight_only_int4_reference,
)

needs_int4pack = pytest.mark.skipif(
    not CpuInt4PackWeightOnlyInt4.is_supported("cpu")[0], reason="no CPU int4pack op in this torch"
)
needs_int8pack = pytest.mark.skipif(
    not Int8PackWeightOnlyInt8.is_supported("cpu")[0], reason="no CPU int8pack op in this torch"
)
# torch packs int4 weights in blocks of 4·Vectorized<float>::size() output channels
# (int4mm_kernel.cpp): 64 in its AVX512 kernels (AMX CPUs included), the layout the many-rows
# path reads; 32 with AVX2 (ATEN_CPU_CAPABILITY=avx2 gives it here), other sizes on Arm.
# There the kernel finds the layout differs and keeps the op for every M (many_rows_from = 0).
INT4PACK_BLOCK_GEMM = torch.backends.cpu.get_cpu_capability() == "AVX512"
needs_int4pack_block_gemm = pytest.mark.skipif(
    not INT4PACK_BLOCK_GEMM, reason="torch's int4pack layout here is not the 64-channel one: op for every M"
)


def test_block_gemm_equals_one_gemm():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 48, generator=g, dtype=torch.bfloat16)
    w = torch.randn(200, 48, generator=g)
    got = float32_gemm_by_blocks(x, lambda cols, scratch: w[cols].T, 200, block=64)
    torch.testing.assert_close(got, x.float() @ w.T, rtol=1e-6, atol=1e-5)
    assert got.dtype == torch.float32 and got.shape == (5, 200)


@needs_int8pack
def test_scratch_buffer_survives_inference_mode_then_grad_mode(monkeypatch):
    """vLLM runs under inference_mode; a buffer made there must not be reused outside it."""
    monkeypatch.setattr(float_gemm, "_scratch", {})  # the first buffer is made in inference mode
    g = torch.Generator().manual_seed(2)
    q = torch.randint(-128, 128, (640, 96), dtype=torch.int8, generator=g)
    scale = torch.rand(640, generator=g) + 0.5
    kernel = make_weight_only_int8(q, scale, None, torch.bfloat16)
    assert isinstance(kernel, Int8PackWeightOnlyInt8)
    x = torch.randn(40, 96, generator=g).bfloat16()  # many rows: the block GEMM path
    want = (x.float() @ (q.float() * scale[:, None]).T).bfloat16()
    with torch.inference_mode():
        inside = kernel(x, None)
    outside = kernel(x, None)
    torch.testing.assert_close(inside, want)
    torch.testing.assert_close(outside, want)


@needs_int4pack
@pytest.mark.parametrize("n", [64, 192, 1024])
def test_int4pack_layout_is_read_back_exactly(n):
    g = torch.Generator().manual_seed(n)
    q = torch.randint(-8, 8, (n, 256), dtype=torch.int8, generator=g)
    scale = torch.rand(n, 2, generator=g) + 0.5
    zp = torch.randint(-3, 4, (n, 2), generator=g).float()
    kernel = make_weight_only_int4(q, scale, zp, torch.bfloat16, kernel=CpuInt4PackWeightOnlyInt4)
    assert (kernel.many_rows_from > 0) is INT4PACK_BLOCK_GEMM
    if not INT4PACK_BLOCK_GEMM:
        pytest.skip("torch's int4pack layout here is not the 64-channel one: op for every M")
    assert torch.equal(kernel._unpacked_t(slice(None)).T.to(torch.int8) - 8, q)
    # Block by block (512 output channels), as the GEMM reads it: q·s + zero with the op's own
    # scale_and_zeros (s and −z·s in bf16), in float32; the bf16 route rounds that once to bf16.
    cols = slice(512, 1024) if n == 1024 else slice(0, 64)
    s_op = scale.to(torch.bfloat16).double()
    zero_op = (-zp * scale).to(torch.bfloat16).double()
    want = q.double() * s_op.repeat_interleave(128, 1) + zero_op.repeat_interleave(128, 1)
    torch.testing.assert_close(kernel._dequantized_t(cols).T.double(), want[cols], rtol=1e-7, atol=0)
    scratch = torch.empty(256 * (cols.stop - cols.start), dtype=torch.bfloat16)
    for _ in range(2):  # twice: the weight must come out unchanged (its bytes are never worked on in place)
        bf16 = kernel._dequantized_t_bf16(cols, scratch)
        assert torch.equal(bf16, kernel._dequantized_t(cols).to(torch.bfloat16))
    assert torch.equal(kernel._unpacked_t(slice(None)).T.to(torch.int8) - 8, q)


@needs_int4pack
def test_int4pack_unknown_block_layout_keeps_the_op():
    q = torch.zeros(80, 64, dtype=torch.int8)  # N % 64 != 0: layout not read, op for every M
    kernel = make_weight_only_int4(
        q, torch.ones(80, 2), None, torch.bfloat16, kernel=CpuInt4PackWeightOnlyInt4
    )
    assert kernel.many_rows_from == 0


@pytest.fixture(params=[torch.float32, torch.bfloat16], ids=["float32-gemm", "bf16-gemm"])
def many_rows_gemm(request, monkeypatch):
    """Builds kernels whose many-rows GEMM runs in this dtype, whatever the host (the bf16 route is
    exact on any CPU, only slow without native bf16): the CPU check answers as that route's host would."""
    native = request.param == torch.bfloat16
    monkeypatch.setattr(float_gemm.cpu_platform, "cpu_has_native_bf16", lambda: native)
    return request.param


def test_many_rows_gemm_dtype_follows_the_cpu_and_the_activations(monkeypatch):
    monkeypatch.setattr(float_gemm.cpu_platform, "cpu_has_native_bf16", lambda: True)
    assert float_gemm.many_rows_gemm_dtype(torch.bfloat16) == torch.bfloat16
    assert float_gemm.many_rows_gemm_dtype(torch.float16) == torch.float32
    assert float_gemm.many_rows_gemm_dtype(torch.float32) == torch.float32
    monkeypatch.setattr(float_gemm.cpu_platform, "cpu_has_native_bf16", lambda: False)
    assert float_gemm.many_rows_gemm_dtype(torch.bfloat16) == torch.float32


@needs_int4pack
@needs_int4pack_block_gemm
def test_int4_many_rows_with_several_blocks_matches_reference(many_rows_gemm):
    g = torch.Generator().manual_seed(1)
    n, k, group = 1088, 256, 64  # three GEMM blocks, the last one partial
    q = torch.randint(-8, 8, (n, k), dtype=torch.int8, generator=g)
    scale = torch.rand(n, k // group, generator=g) * 0.05 + 1e-3
    zp = torch.randint(-4, 4, (n, k // group), generator=g).float()
    x = torch.randn(70, k, generator=g).to(torch.bfloat16)
    bias = torch.randn(n, generator=g).to(torch.bfloat16)
    kernel = make_weight_only_int4(q, scale, zp, torch.bfloat16, kernel=CpuInt4PackWeightOnlyInt4)
    assert kernel.many_rows_dtype == many_rows_gemm and x.shape[0] >= kernel.many_rows_from
    got = kernel(x, bias)
    want = weight_only_int4_reference(x, q, scale, zp, bias, torch.float64)
    # Both routes use the op's scale_and_zeros (s, −z·s in bf16); the bf16 one also rounds W and
    # x·Wᵀ to bf16 before the bias: the roundings declared for cpu_int4pack (kernel_bounds).
    exact, bound = weight_only_expectation("int4", "cpu_int4pack", x, q, scale, zp, bias)
    torch.testing.assert_close(want, exact, rtol=1e-12, atol=1e-12)
    assert_within(got, exact, bound)
    assert torch.equal(kernel(x, bias), got)  # a second call: same bits (nothing kept from the first)


@needs_int8pack
@pytest.mark.parametrize("zero_point", [False, True])
def test_int8_many_rows_with_several_blocks_matches_reference(many_rows_gemm, zero_point):
    g = torch.Generator().manual_seed(4)
    n, k = 1100, 200  # three GEMM blocks, the last one partial; K padded to 208 for the op
    q = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g)
    scale = torch.exp2(-torch.randint(6, 11, (n,), generator=g).float())
    zp = torch.randint(-60, 60, (n,), generator=g).float() if zero_point else None
    x = torch.randn(40, k, generator=g).to(torch.bfloat16)
    bias = torch.randn(n, generator=g).to(torch.bfloat16)
    kernel = make_weight_only_int8(q, scale, zp, torch.bfloat16)
    assert kernel.many_rows_dtype == many_rows_gemm and x.shape[0] >= kernel.many_rows_from
    got = kernel(x, bias)
    # bf16 route: x·qᵀ rounded to bf16 (exact integer weights), then the float32 epilogue: the
    # op's own declared rounding; float32 route: within it.
    exact, bound = weight_only_expectation("int8", "cpu_int8pack", x, q, scale, zp, bias)
    assert_within(got, exact, bound)


class _PathRecorder:
    """Wraps a kernel's two paths to record which one ran."""

    def __init__(self, kernel):
        self.paths: list[str] = []
        few, many = kernel.forward_few_rows, kernel.forward_many_rows
        kernel.forward_few_rows = lambda x, b: (self.paths.append("few"), few(x, b))[1]
        kernel.forward_many_rows = lambda x, b: (self.paths.append("many"), many(x, b))[1]


def _int8_kernel():
    g = torch.Generator().manual_seed(2)
    w_q = torch.randint(-128, 128, (64, 128), dtype=torch.int8, generator=g)
    return make_weight_only_int8(w_q, torch.rand(64, generator=g) * 0.01, None, torch.bfloat16)


def _int4_kernel():
    g = torch.Generator().manual_seed(3)
    q = torch.randint(-8, 8, (64, 128), dtype=torch.int8, generator=g)
    return make_weight_only_int4(
        q, torch.rand(64, 1, generator=g) * 0.05, None, torch.bfloat16, kernel=CpuInt4PackWeightOnlyInt4
    )


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(_int8_kernel, marks=needs_int8pack),
        pytest.param(_int4_kernel, marks=[needs_int4pack, needs_int4pack_block_gemm]),
    ],
)
def test_compiled_without_guards_still_dispatches_by_rows(make):
    """vLLM compiles once for a symbolic M and drops every guard: the branch must happen at run time."""
    torch._dynamo.reset()
    kernel = make()
    recorder = _PathRecorder(kernel)
    compiled = torch.compile(
        lambda x: kernel(x, None) * 2,
        dynamic=True,
        options={"guard_filter_fn": torch.compiler.skip_all_guards_unsafe},
    )
    rows = [3, kernel.many_rows_from + 8, 1, kernel.many_rows_from]  # first M > 1: traced symbolic
    for m in rows:
        x = torch.randn(m, 128).to(torch.bfloat16)
        torch.testing.assert_close(compiled(x), kernel.forward_eager(x, None) * 2, rtol=0, atol=0)
    # each compiled call, then the eager check
    assert recorder.paths == [p for m in rows for p in 2 * ["many" if m >= kernel.many_rows_from else "few"]]
    torch._dynamo.reset()
