"""The project's W8A16 VNNI kernel (``cpu_int8_vnni_w8a16``) against the float64 reference.

Few rows: every bf16 activation row is split into four exact int8 limbs and multiplied by the int8
weight in exact int32 sums, so the op is held to the reference's own bound (float32 sums and
epilogue, one rounding), also on rows whose values span many binades; many rows: on AVX512-BF16
CPUs the bf16 panel GEMM (q exact in bf16, exact products, float32 sums), held to the same bound,
elsewhere the inherited block GEMM over unpacked blocks, to the bound ``kernel_bounds`` declares. A
slip in the limb split, the packing, the ``128·Σ a`` correction, the zero point, a partial strip of
channels, a chunk of K or a row block fails here.
"""

import pytest
import torch
from kernel_bounds import assert_within, weight_only_expectation
from no_compiler import run_without_a_compiler
from test_kernels_weight_only_int8 import case

from vllm_modelslim.kernels.float_gemm import panel_gemm_preferred
from vllm_modelslim.kernels.weight_only import (
    Avx512VnniWeightOnlyInt8,
    Avx512WeightOnlyInt8,
    WeightOnlyConfig,
    make_weight_only_int8,
)
from vllm_modelslim.kernels.weight_only.avx512_vnni_int8 import (
    BF16_GEMM_MANY_ROWS_FROM,
    MANY_ROWS_FROM,
    bf16_gemm_unavailable,
    ops_unavailable,
)

ISA_MISSING = Avx512VnniWeightOnlyInt8.is_supported("cpu")[1]
WHY_NOT = ISA_MISSING or ops_unavailable()  # the ISA, then the C++ build
needs_kernel = pytest.mark.skipif(WHY_NOT is not None, reason=f"cpu_int8_vnni_w8a16: {WHY_NOT}")
KERNEL = Avx512VnniWeightOnlyInt8.name


def make(w_q, scale, zp):
    return make_weight_only_int8(w_q, scale, zp, torch.bfloat16, kernel=Avx512VnniWeightOnlyInt8)


@needs_kernel
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 9, BF16_GEMM_MANY_ROWS_FROM - 1, MANY_ROWS_FROM - 1])
@pytest.mark.parametrize("k,n", [(16, 16), (256, 64), (2048, 48), (100, 32)])  # K = 100: padded to 112
@pytest.mark.parametrize("zero_point", ["none", "mixed"])
def test_few_rows_round_only_the_output(m, k, n, zero_point):
    x, w_q, scale, zp, bias = case(m, k, n, zero_point, torch.bfloat16, seed=m + k)
    kernel = make(w_q, scale, zp)
    got = kernel.forward_few_rows(x, bias)
    assert got.dtype == torch.bfloat16 and got.shape == (m, n)
    assert_within(got, *weight_only_expectation("int8", "reference", x, w_q, scale, zp, bias))
    if m < kernel.many_rows_from:
        assert torch.equal(kernel(x, bias), got)  # below the threshold the dispatch takes this path
    assert_within(kernel(x, None), *weight_only_expectation("int8", "reference", x, w_q, scale, zp, None))


@needs_kernel
def test_rows_spanning_many_binades_zero_rows_and_non_finite_rows():
    """Values from 2^−40 to 2^12 in one row (the small ones below the limbs' exact range), a row of
    zeros (the bias alone) and a row holding inf (NaN out, as float32 sums would give)."""
    k, n = 256, 32
    x, w_q, scale, zp, bias = case(4, k, n, "mixed", torch.bfloat16, seed=7)
    g = torch.Generator().manual_seed(8)
    x[1] = (torch.randn(k, generator=g) * torch.exp2(torch.randint(-40, 13, (k,), generator=g).float())).to(
        torch.bfloat16
    )
    x[2] = 0
    kernel = make(w_q, scale, zp)
    got = kernel.forward_few_rows(x[:3], bias)
    assert_within(got, *weight_only_expectation("int8", "reference", x[:3], w_q, scale, zp, bias))
    assert torch.equal(got[2], bias)
    x[3, 5] = float("inf")
    assert torch.isnan(kernel.forward_few_rows(x, bias)[3]).all()


@needs_kernel
@pytest.mark.parametrize("panel", [True, False], ids=["panel_gemm", "unpacked_blocks"])
@pytest.mark.parametrize("m", [BF16_GEMM_MANY_ROWS_FROM, MANY_ROWS_FROM, 70])
# 544: eight strips of 64 channels and one of 32; K = 1100, padded to 1104: panels of 512, 512, 80 k
@pytest.mark.parametrize("k,n", [(256, 544), (100, 32), (1100, 80)])
def test_many_rows(panel, m, k, n):
    if panel and bf16_gemm_unavailable() is not None:
        pytest.skip(f"int8_weight_bf16_gemm: {bf16_gemm_unavailable()}")
    x, w_q, scale, zp, bias = case(m, k, n, "mixed", torch.bfloat16, seed=m)
    kernel = make(w_q, scale, zp)
    chosen, kernel.panel_gemm = kernel.panel_gemm, panel  # the other CPUs' path (blocks) runs here too
    got = kernel.forward_many_rows(x, bias)
    if panel == chosen and m >= kernel.many_rows_from:
        assert torch.equal(got, kernel(x, bias))
    # the panel GEMM rounds nothing but the output: the reference's own bound
    bound_of = "reference" if panel else KERNEL
    assert_within(got, *weight_only_expectation("int8", bound_of, x, w_q, scale, zp, bias))


PANEL_WHY_NOT = WHY_NOT or bf16_gemm_unavailable() or (not panel_gemm_preferred() and "AMX CPU (bf16 blocks)")


@pytest.mark.skipif(bool(PANEL_WHY_NOT), reason=f"int8_weight_bf16_gemm: {PANEL_WHY_NOT}")
def test_the_panel_gemm_runs_many_rows_on_avx512_bf16_cpus_without_amx():
    x, w_q, scale, zp, bias = case(BF16_GEMM_MANY_ROWS_FROM, 256, 64, "mixed", torch.bfloat16, seed=3)
    kernel = make(w_q, scale, zp)
    assert kernel.panel_gemm and kernel.many_rows_from == BF16_GEMM_MANY_ROWS_FROM
    want = torch.ops.vllm_modelslim.int8_weight_bf16_gemm(
        x, kernel.weight, kernel.weight_scale, kernel.zero_point, bias.float()
    )
    assert torch.equal(kernel(x, bias), want)


@needs_kernel
def test_one_byte_per_weight_and_the_selection():
    x, w_q, scale, zp, bias = case(1, 256, 64, "none", torch.bfloat16)
    kernel = make_weight_only_int8(w_q, scale, zp, torch.bfloat16)
    assert type(kernel) is Avx512VnniWeightOnlyInt8  # first for bf16 W8A16 where it builds
    assert kernel.weight.dtype == torch.uint8 and kernel.weight.numel() == w_q.numel()
    assert type(make_weight_only_int8(w_q, scale, zp, torch.float32)) is Avx512WeightOnlyInt8


@pytest.mark.parametrize(
    "change,why",
    [
        (dict(act_dtype=torch.float32), "bf16 activations only"),
        (dict(out_features=40), "not a multiple of 16"),
        (dict(group_size=64), "per-channel"),
    ],
)
def test_layers_it_cannot_run_are_refused(change, why):
    base = dict(in_features=256, out_features=64, group_size=256, act_dtype=torch.bfloat16, bits=8)
    ok, reason = Avx512VnniWeightOnlyInt8.can_implement(WeightOnlyConfig(**{**base, **change}))
    assert not ok and why in reason


@needs_kernel
def test_traced_with_a_symbolic_row_count():
    x, w_q, scale, zp, bias = case(1, 128, 32, "mixed", torch.bfloat16)
    kernel = make(w_q, scale, zp)
    compiled = torch.compile(lambda x: kernel(x, bias), dynamic=True, fullgraph=True)
    for rows in (1, 5, BF16_GEMM_MANY_ROWS_FROM + 3, MANY_ROWS_FROM + 3):
        x = torch.randn(rows, 128, generator=torch.Generator().manual_seed(rows)).to(torch.bfloat16)
        assert torch.equal(compiled(x), kernel(x, bias))


@pytest.mark.skipif(ISA_MISSING is not None, reason=f"cpu_int8_vnni_w8a16: {ISA_MISSING}")
def test_a_host_that_cannot_build_falls_back_with_the_reason(tmp_path):
    """No working compiler: the C++ kernels are skipped with the build error; torch's int8pack op runs."""
    run = run_without_a_compiler(
        tmp_path,
        "from vllm_modelslim.kernels.weight_only import make_weight_only_int8\n"
        "k = make_weight_only_int8(torch.zeros(32, 64, dtype=torch.int8), torch.ones(32), None,"
        " torch.bfloat16, label='W8A16')\n"
        "print('chosen:', k.name)\n",
    )
    assert "chosen: cpu_int8pack" in run.stdout
    assert "skipped: cpu_int8_vnni_w8a16 (could not build int8_weight_vnni_linear.cpp" in run.stderr
