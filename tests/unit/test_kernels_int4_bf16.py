"""The project's W4A16 AVX-512 BF16 kernel (``cpu_int4_avx512bf16``) against the float64 reference.

The few-rows op forms every bf16 × int4 product exactly in float32 and rounds only its output, so it
is held to the reference's own bound (no weight, scale or pre-bias rounding); the many-rows path to
the roundings declared in ``kernel_bounds``: the weight dequantized to bf16 panel by panel for its
vdpbf16ps GEMM, or (AMX CPUs; it runs here too) block by block for oneDNN's GEMM. Both read the
project's packed int4 layout: a slip in the nibble order, the activation reordering, a group
boundary, a zero point, a partial strip of channels, a chunk of K or a block of rows fails here.
"""

import pytest
import torch
from kernel_bounds import WEIGHT_ONLY_ROUNDING, assert_within, weight_only_expectation
from no_compiler import run_without_a_compiler
from test_kernels_int4 import int4_case

from vllm_modelslim.kernels.float_gemm import panel_gemm_preferred
from vllm_modelslim.kernels.weight_only import (
    Avx512Bf16WeightOnlyInt4,
    WeightOnlyConfig,
    make_weight_only_int4,
)
from vllm_modelslim.kernels.weight_only.avx512_bf16_int4 import BF16_MANY_ROWS_FROM, ops_unavailable

ISA_MISSING = Avx512Bf16WeightOnlyInt4.is_supported("cpu")[1]
WHY_NOT = ISA_MISSING or ops_unavailable()  # the ISA, then the C++ build
needs_kernel = pytest.mark.skipif(WHY_NOT is not None, reason=f"cpu_int4_avx512bf16: {WHY_NOT}")
KERNEL = Avx512Bf16WeightOnlyInt4.name


def make(q, scale, zp):
    return make_weight_only_int4(q, scale, zp, torch.bfloat16, kernel=Avx512Bf16WeightOnlyInt4)


@needs_kernel
@pytest.mark.parametrize("m", [1, 2, 8, 9, 17, BF16_MANY_ROWS_FROM - 1])
@pytest.mark.parametrize(
    "n,k,group", [(16, 64, 8), (32, 256, 64), (48, 768, 128), (64, 512, 512), (16, 8, 8), (80, 384, 96)]
)
@pytest.mark.parametrize("zero_point", [False, True])
def test_few_rows_round_only_the_output(m, n, k, group, zero_point):
    x, q, scale, zp, bias = int4_case(m, n, k, group, zero_point, torch.bfloat16, seed=m + k)
    kernel = make(q, scale, zp)
    exact, bound = weight_only_expectation("int4", "reference", x, q, scale, zp, bias)
    got = kernel.forward_few_rows(x, bias)
    assert got.dtype == torch.bfloat16 and got.shape == (m, n)
    assert_within(got, exact, bound)
    assert torch.equal(kernel(x, bias), got)  # below the threshold the dispatch takes this path
    exact, bound = weight_only_expectation("int4", "reference", x, q, scale, zp, None)
    assert_within(kernel(x, None), exact, bound)


@needs_kernel
@pytest.mark.parametrize("panel", [True, False], ids=["panel_gemm", "dequantized_blocks"])
@pytest.mark.parametrize("m", [BF16_MANY_ROWS_FROM, 70])
# 528: eight strips of 64 channels and one of 16 (one block of 512 and a rest); K = 1280: panels of
# 512, 512 and 256 k
@pytest.mark.parametrize("n,k,group", [(528, 256, 64), (32, 96, 32), (80, 1280, 128)])
def test_many_rows_round_the_weight_to_bf16(panel, m, n, k, group):
    assert WEIGHT_ONLY_ROUNDING[("int4", KERNEL)].weight  # what this path's bound adds
    x, q, scale, zp, bias = int4_case(m, n, k, group, True, torch.bfloat16, seed=m)
    kernel = make(q, scale, zp)
    kernel.panel_gemm = panel  # the AMX CPUs' path (blocks for oneDNN) runs here too
    exact, bound = weight_only_expectation(
        "int4", "bf16_panel_gemm" if panel else KERNEL, x, q, scale, zp, bias
    )
    got = kernel.forward_many_rows(x, bias)
    assert_within(got, exact, bound)
    if panel == panel_gemm_preferred():
        assert torch.equal(got, kernel(x, bias))


@needs_kernel
@pytest.mark.parametrize("panel", [True, False], ids=["panel_gemm", "dequantized_blocks"])
def test_the_many_rows_weight_is_q_minus_z_times_s_rounded_once(panel):
    """Rows of the identity pick single weights: y[m, n] = bf16((q − z)·s)[n, m], bit for bit."""
    n, k, group = 80, 640, 64  # a strip of 64 channels and one of 16; panels of 512 and 128 k
    _, q, scale, zp, _ = int4_case(1, n, k, group, True, torch.bfloat16, seed=4)
    scale = scale * 1.37  # arbitrary float32 scales: one rounding of (q − z)·s, not of s or z·s
    kernel = make(q, scale, zp)
    kernel.panel_gemm = panel
    got = kernel.forward_many_rows(torch.eye(k, dtype=torch.bfloat16), None)
    expected = (q.double() - zp.repeat_interleave(group, 1)) * scale.repeat_interleave(group, 1)
    assert torch.equal(got, expected.T.float().to(torch.bfloat16))


@needs_kernel
def test_weights_stay_half_a_byte_each():
    _, q, scale, zp, _ = int4_case(1, 64, 256, 64, True, torch.bfloat16)
    kernel = make(q, scale, zp)
    assert kernel.weight.dtype == torch.uint8 and kernel.weight.numel() == q.numel() // 2
    assert kernel.weight_scale.shape == kernel.zero_point.shape == (4, 64)  # [K/g, N] float32


@pytest.mark.parametrize(
    "change,why",
    [
        (dict(act_dtype=torch.float32), "bf16 activations only"),
        (dict(out_features=40), "not a multiple of 16"),
        (dict(group_size=12, in_features=96), "not a multiple of 8"),
        (dict(bits=8), "4-bit values"),
    ],
)
def test_layers_it_cannot_run_are_refused(change, why):
    config = WeightOnlyConfig(
        **{
            **dict(in_features=256, out_features=64, group_size=64),
            **change,
            "act_dtype": change.get("act_dtype", torch.bfloat16),
            "bits": change.get("bits", 4),
        }
    )
    ok, reason = Avx512Bf16WeightOnlyInt4.can_implement(config)
    assert not ok and why in reason


@needs_kernel
def test_traced_with_a_symbolic_row_count():
    """Under torch.compile (dynamic M) the row dispatch stays opaque: each M takes its eager path."""
    x, q, scale, zp, bias = int4_case(1, 32, 128, 32, True, torch.bfloat16)
    kernel = make(q, scale, zp)
    compiled = torch.compile(lambda x: kernel(x, bias), dynamic=True, fullgraph=True)
    for rows in (1, 5, BF16_MANY_ROWS_FROM + 3):
        x = torch.randn(rows, 128, generator=torch.Generator().manual_seed(rows)).to(torch.bfloat16)
        assert torch.equal(compiled(x), kernel(x, bias))


@pytest.mark.skipif(ISA_MISSING is not None, reason=f"cpu_int4_avx512bf16: {ISA_MISSING}")
def test_a_host_that_cannot_build_falls_back_with_the_reason(tmp_path):
    """No working compiler: the kernel is skipped with the build error and torch's int4 op runs the layer."""
    run = run_without_a_compiler(
        tmp_path,
        "from vllm_modelslim.kernels.weight_only import make_weight_only_int4\n"
        "k = make_weight_only_int4(torch.zeros(32, 64, dtype=torch.int8), torch.ones(32, 2), None,"
        " torch.bfloat16, label='W4A16')\n"
        "print('chosen:', k.name)\n",
    )
    assert "chosen: cpu_int4pack" in run.stdout
    assert "skipped: cpu_int4_avx512bf16 (could not build int4_bf16_weight_linear.cpp" in run.stderr
