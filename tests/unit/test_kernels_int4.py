"""int4 kernels against their references: weight-only int4, grouped int8 GEMM, int4 activations, Kronecker."""

import pytest
import torch
from kernel_bounds import (
    assert_quantized,
    assert_within,
    dynamic_quant_value,
    dynamic_scale_expectation,
    kronecker_bound,
    scaled_int8_mm_expectation,
    weight_only_expectation,
)

from vllm_modelslim.kernels import (
    kronecker_transform,
    kronecker_transform_reference,
    quantize_dynamic_per_token,
    quantize_dynamic_per_token_reference,
)
from vllm_modelslim.kernels.scaled_int8_mm import (
    SCALED_INT8_MM_KERNELS,
    ScaledInt8MMConfig,
    make_scaled_int8_mm,
    scaled_int8_mm_reference,
)
from vllm_modelslim.kernels.weight_only import (
    WEIGHT_ONLY_INT4_KERNELS,
    Avx512Bf16WeightOnlyInt4,
    CpuInt4PackWeightOnlyInt4,
    DequantMatmulWeightOnly,
    WeightOnlyConfig,
    make_weight_only_int4,
    weight_only_int4_reference,
)
from vllm_modelslim.kernels.weight_only.avx512_bf16_int4 import ops_unavailable as bf16_ops_unavailable

INT4_KERNELS = [k for k in WEIGHT_ONLY_INT4_KERNELS if k.is_supported("cpu")[0]]
INT8_KERNELS = [k for k in SCALED_INT8_MM_KERNELS if k.is_supported("cpu")[0]]


def int4_case(m, n, k, group, zero_point, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(dtype)
    q = torch.randint(-8, 8, (n, k), dtype=torch.int8, generator=g)
    if dtype == torch.float32:
        scale = torch.rand(n, k // group, generator=g) * 0.05 + 1e-3
    else:
        # 4 significant bits: (q − z)·s and z·s are exact in bf16/fp16, so only the kernels' own
        # roundings remain in the bound (kernel_bounds) and a 1 % scale error exceeds it.
        mantissa = 1 + torch.randint(0, 8, (n, k // group), generator=g).float() / 8
        scale = mantissa * torch.exp2(-torch.randint(4, 8, (n, k // group), generator=g).float())
    zp = torch.randint(-4, 4, (n, k // group), generator=g).float() if zero_point else None
    bias = torch.randn(n, generator=g).to(dtype)
    return x, q, scale, zp, bias


@pytest.mark.parametrize("kernel", INT4_KERNELS, ids=lambda k: k.name)
@pytest.mark.parametrize("m", [1, 7, 33])
@pytest.mark.parametrize(
    "n,k,group",
    [
        (64, 256, 64),
        (32, 96, 32),
        (48, 768, 128),
        (16, 64, 16),
        (16, 250, 50),
        (7, 13, 13),
        (64, 512, 512),
        (64, 384, 96),
    ],
)
@pytest.mark.parametrize("zero_point", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_weight_only_int4_matches_reference(kernel, m, n, k, group, zero_point, dtype):
    if not kernel.can_implement(WeightOnlyConfig(k, n, group, dtype, bits=4))[0]:
        pytest.skip(f"{kernel.name} cannot run this case")
    x, q, scale, zp, bias = int4_case(m, n, k, group, zero_point, dtype)
    got = make_weight_only_int4(q, scale, zp, dtype, kernel=kernel)(x, bias)
    assert got.dtype == dtype
    exact, bound = weight_only_expectation("int4", kernel.name, x, q, scale, zp, bias)
    torch.testing.assert_close(
        weight_only_int4_reference(x, q, scale, zp, bias, torch.float64), exact, rtol=1e-12, atol=1e-12
    )
    assert_within(got, exact, bound)


def test_int4pack_rounds_scales_to_the_activation_dtype_and_nothing_else():
    """Arbitrary float32 scales: torch's op takes ``s`` and ``−z·s`` in bf16; its declared rounding."""
    x, q, _, zp, bias = int4_case(3, 64, 256, 64, True, torch.bfloat16)
    scale = torch.rand(64, 4, generator=torch.Generator().manual_seed(5)) * 0.05 + 1e-3
    got = make_weight_only_int4(q, scale, zp, torch.bfloat16, kernel=CpuInt4PackWeightOnlyInt4)(x, bias)
    exact, bound = weight_only_expectation("int4", "cpu_int4pack", x, q, scale, zp, bias)
    assert_within(got, exact, bound)


def test_int4_selection_and_constraints():
    x, q, scale, zp, _ = int4_case(1, 64, 256, 64, False, torch.bfloat16)
    bf16_op = Avx512Bf16WeightOnlyInt4.is_supported("cpu")[0] and bf16_ops_unavailable() is None
    first = Avx512Bf16WeightOnlyInt4 if bf16_op else CpuInt4PackWeightOnlyInt4
    assert type(make_weight_only_int4(q, scale, zp, torch.bfloat16)) is first
    assert type(make_weight_only_int4(q, scale, zp, torch.float32)) is CpuInt4PackWeightOnlyInt4
    # N not a multiple of 16, or a group size torch's kernel lacks: the portable kernel.
    assert isinstance(make_weight_only_int4(q[:8], scale[:8], None, torch.bfloat16), DequantMatmulWeightOnly)
    q2, s2 = torch.zeros(16, 48, dtype=torch.int8), torch.ones(16, 3)  # g = 16: not one of torch's
    assert isinstance(make_weight_only_int4(q2, s2, None, torch.float32), DequantMatmulWeightOnly)
    bf16_kernel = Avx512Bf16WeightOnlyInt4 if bf16_op else DequantMatmulWeightOnly  # groups of 8·j
    assert type(make_weight_only_int4(q2, s2, None, torch.bfloat16)) is bf16_kernel
    with pytest.raises(ValueError, match="do not fit"):
        make_weight_only_int4(q, torch.ones(64, 3), None, torch.bfloat16)  # 3 groups do not divide K = 256


@pytest.mark.parametrize("kernel", INT8_KERNELS, ids=lambda k: k.name)
@pytest.mark.parametrize(
    "m,n,k,groups", [(1, 16, 128, 2), (9, 24, 256, 4), (40, 8, 192, 3), (3, 8, 250, 2), (2, 5, 13, 1)]
)
def test_grouped_int8_gemm_matches_reference(kernel, m, n, k, groups):
    ok, why = kernel.can_implement(ScaledInt8MMConfig(k, n, "cpu", k // groups if groups > 1 else 0))
    if not ok:
        pytest.skip(f"{kernel.name}: {why}")
    g = torch.Generator().manual_seed(1)
    x_q = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=g)
    w_q = torch.randint(-8, 8, (n, k), dtype=torch.int8, generator=g)
    x_scale = torch.rand(m, generator=g) + 0.1
    scale = torch.rand(n, groups, generator=g) * 0.01 + 1e-3
    got = make_scaled_int8_mm(w_q, scale, kernel=kernel)(x_q, x_scale, None, torch.float32)
    exact, bound = scaled_int8_mm_expectation(x_q, x_scale, w_q, scale)
    torch.testing.assert_close(scaled_int8_mm_reference(x_q, x_scale, w_q, scale), exact, rtol=1e-12, atol=0)
    assert_within(got, exact, bound)
    # Per group, not per channel: with equal group scales it equals the per-channel product.
    equal_groups = scale[:, :1].expand(n, groups).contiguous()
    flat = make_scaled_int8_mm(w_q, equal_groups, kernel=kernel)
    exact, _ = scaled_int8_mm_expectation(x_q, x_scale, w_q, scale[:, 0])
    exact_grouped, bound = scaled_int8_mm_expectation(x_q, x_scale, w_q, equal_groups)  # G fp32 partial sums
    torch.testing.assert_close(exact_grouped, exact, rtol=1e-12, atol=0)
    assert_within(flat(x_q, x_scale, None, torch.float64), exact, bound)


def test_grouped_gemm_rejects_int_bias_and_bad_groups():
    w = torch.zeros(4, 8, dtype=torch.int8)
    with pytest.raises(ValueError, match="per-channel"):
        make_scaled_int8_mm(w, torch.ones(4, 2), torch.zeros(4, dtype=torch.int32))
    with pytest.raises(ValueError, match="do not divide"):
        make_scaled_int8_mm(w, torch.ones(4, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("clip", [1.0, 0.98, 0.9])
def test_int4_activation_quantization(dtype, clip):
    torch.manual_seed(2)
    x = (torch.randn(17, 96) * 4).to(dtype)
    q, s = quantize_dynamic_per_token(x, bits=4, clip_ratio=clip)
    q_ref, s_ref = quantize_dynamic_per_token_reference(x, bits=4, clip_ratio=clip)
    # The scale: clip·max|x|/7 with two float32 roundings (fast: max·fl(clip/7); reference: one rounding).
    exact_s, s_bound = dynamic_scale_expectation(x, 4, clip)
    assert_within(s, exact_s, s_bound)
    assert_within(s_ref, exact_s, s_bound)
    # q = round(x/s) of the kernel's own scale, one fp32 division away from exact.
    assert_quantized(q, *dynamic_quant_value(x, s), low=-8, high=7)
    if clip == 1.0:  # max|x|/7 is one division in both: the same float32 scale, the same bits
        assert torch.equal(s, s_ref) and torch.equal(q, q_ref)
        assert torch.equal(q.abs().amax(dim=-1), torch.full((17,), 7, dtype=torch.int8))
    else:  # the two scales may differ by an ulp: q only where x/s is that close to a tie
        assert_quantized(q_ref, *dynamic_quant_value(x, s_ref), low=-8, high=7)
        value, slack = dynamic_quant_value(x, s_ref)
        assert_quantized(
            q, value, slack + 2 * s_bound.unsqueeze(-1) / exact_s.unsqueeze(-1) * value.abs(), -8, 7
        )
    assert int(q.min()) >= -8 and int(q.max()) <= 7


def test_int4_activation_saturates_and_handles_zero_rows():
    x = torch.tensor([[0.0, 0.0], [-1.0, 0.5]])
    q, s = quantize_dynamic_per_token(x, bits=4, clip_ratio=0.5)  # scale = 0.5/7: |x/s| up to 14
    assert q[0].tolist() == [0, 0] and s[0].item() == 1.0
    assert q[1].tolist() == [-8, 7]
    with pytest.raises(ValueError, match="4 or 8 bits"):
        quantize_dynamic_per_token(x, bits=3)


@pytest.mark.parametrize("left,right", [(16, 16), (4, None), (None, 8), (8, 32)])
def test_kronecker_transform_matches_full_kronecker_product(left, right):
    torch.manual_seed(3)
    k = (left or 256 // right) * (right or 256 // left) if (left and right) else 256
    x = torch.randn(5, k)
    l_mat = torch.randn(left, left) if left else None
    r_mat = torch.randn(right, right) if right else None
    got = kronecker_transform(x, l_mat, r_mat)
    want = kronecker_transform_reference(x, l_mat, r_mat)
    assert got.dtype == torch.float32 and want.dtype == torch.float64
    assert_within(got, want, kronecker_bound(x, l_mat, r_mat))


def test_kronecker_transform_is_l_transpose_x_r():
    x = torch.arange(6.0).reshape(1, 6)  # X = [[0,1,2],[3,4,5]]
    left = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    right = torch.eye(3)
    # Lᵀ·X = [[1,0],[2,1]]·X = [[0,1,2],[3,6,9]]
    assert kronecker_transform(x, left, right).tolist() == [[0.0, 1.0, 2.0, 3.0, 6.0, 9.0]]
    with pytest.raises(ValueError, match="do not match K"):
        kronecker_transform(x, torch.eye(4), torch.eye(4))
