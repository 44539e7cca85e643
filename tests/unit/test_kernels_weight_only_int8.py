import pytest
import torch
from kernel_bounds import assert_within, weight_only_expectation

from vllm_modelslim.kernels.weight_only import (
    WEIGHT_ONLY_INT8_KERNELS,
    Avx512WeightOnlyInt8,
    DequantMatmulWeightOnly,
    Int8PackWeightOnlyInt8,
    ReferenceWeightOnly,
    WeightOnlyConfig,
    dequantize_int8_weight,
    make_weight_only_int8,
    weight_only_int8_reference,
)
from vllm_modelslim.kernels.weight_only.avx512_int8 import ops_unavailable

CPU_KERNELS = [
    k
    for k in WEIGHT_ONLY_INT8_KERNELS
    if k.is_supported("cpu")[0] and getattr(k, "ops_unavailable", lambda: None)() is None
]  # the AVX-512 ops also need their C++ build
SHAPES = [(1, 13, 7), (1, 250, 70), (7, 250, 70), (33, 256, 64)]
DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def case(m, k, n, zero_point, dtype, seed=0):
    """Random inputs. For bf16/fp16 the scales are powers of two, so that ``(q − z)·s`` is exact in the
    activation dtype and the only bf16 roundings left are the kernel's own (see ``kernel_bounds``): a
    1 % scale error is then larger than the bound. fp32 takes arbitrary float32 scales."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(dtype)
    w_q = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g)
    if dtype == torch.float32:
        scale = torch.rand(n, generator=g) * 0.01 + 1e-3
    else:
        scale = torch.exp2(-torch.randint(6, 11, (n,), generator=g).float())
    zp = {
        "none": None,
        "zero": torch.zeros(n),
        "negative": -torch.randint(1, 60, (n,), generator=g).float(),
        "mixed": torch.randint(-60, 60, (n,), generator=g).float(),
    }[zero_point]
    bias = torch.randn(n, generator=g).to(dtype)
    return x, w_q, scale, zp, bias


def assert_matches_reference(kernel_name, got, x, w_q, scale, zp, bias):
    """The shared weight-only bound (``kernel_bounds``); the reference itself must agree with it too."""
    exact, bound = weight_only_expectation("int8", kernel_name, x, w_q, scale, zp, bias)
    torch.testing.assert_close(
        weight_only_int8_reference(x, w_q, scale, zp, bias, torch.float64), exact, rtol=1e-12, atol=1e-12
    )
    assert_within(got, exact, bound)


@pytest.mark.parametrize("kernel", CPU_KERNELS, ids=lambda k: k.name)
@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("zero_point", ["none", "zero", "negative", "mixed"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(kernel, m, k, n, zero_point, dtype):
    ok, why = kernel.can_implement(WeightOnlyConfig(k, n, k, dtype, bits=8))
    if not ok:
        pytest.skip(f"{kernel.name}: {why}")
    x, w_q, scale, zp, bias = case(m, k, n, zero_point, dtype)
    layer = make_weight_only_int8(w_q, scale, zp, dtype, kernel=kernel)
    got = layer(x, bias)
    assert got.shape == (m, n) and got.dtype == dtype
    assert_matches_reference(kernel.name, got, x, w_q, scale, zp, bias)


def test_zero_point_is_subtracted():
    # ERRATA 1: w = (q − offset)·scale. With q == offset the weight is zero.
    w_q = torch.full((16, 16), 10, dtype=torch.int8)  # 16 × 16: every kernel's shape constraint
    zp = torch.tensor([10.0, -10.0]).repeat(8)
    w = dequantize_int8_weight(w_q, torch.ones(16), zp)
    assert w[0].tolist() == [0.0] * 16 and w[1].tolist() == [20.0] * 16
    for kernel in CPU_KERNELS:
        x = torch.ones(1, 16, dtype=torch.bfloat16)
        y = make_weight_only_int8(w_q, torch.ones(16), zp, torch.bfloat16, kernel=kernel)(x, None)
        assert y.float().tolist() == [[0.0, 320.0] * 8], kernel.name


def test_selection():
    w_q = torch.ones(16, 32, dtype=torch.int8)
    assert isinstance(
        make_weight_only_int8(w_q, torch.ones(16), None, torch.bfloat16), Int8PackWeightOnlyInt8
    )
    avx512 = Avx512WeightOnlyInt8.is_supported("cpu")[0] and ops_unavailable() is None
    float32_kernel = Avx512WeightOnlyInt8 if avx512 else DequantMatmulWeightOnly
    assert isinstance(make_weight_only_int8(w_q, torch.ones(16), None, torch.float32), float32_kernel)
    if avx512:  # bf16: the AVX-512 op for few rows ahead of torch's int8pack op
        assert isinstance(
            make_weight_only_int8(w_q, torch.ones(16), None, torch.bfloat16), Avx512WeightOnlyInt8
        )
    # An all-zero zero point is dropped (no correction term).
    assert make_weight_only_int8(w_q, torch.ones(16), torch.zeros(16), torch.bfloat16).zero_point is None
    assert ReferenceWeightOnly.can_implement(None)[0]
