import pytest
import torch

from vllm_modelslim.kernels.weight_only_int8 import (
    WEIGHT_ONLY_INT8_KERNELS,
    DequantMatmulWeightOnlyInt8,
    Int8PackWeightOnlyInt8,
    ReferenceWeightOnlyInt8,
    WeightOnlyInt8Config,
    dequantize_int8_weight,
    make_weight_only_int8,
    weight_only_int8_reference,
)

CPU_KERNELS = [k for k in WEIGHT_ONLY_INT8_KERNELS if k.is_supported("cpu")[0]]
SHAPES = [(1, 13, 7), (1, 250, 70), (7, 250, 70), (33, 256, 64)]
DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def case(m, k, n, zero_point, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(dtype)
    w_q = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g)
    scale = torch.rand(n, generator=g) * 0.01 + 1e-3
    zp = {
        "none": None,
        "zero": torch.zeros(n),
        "negative": -torch.randint(1, 60, (n,), generator=g).float(),
        "mixed": torch.randint(-60, 60, (n,), generator=g).float(),
    }[zero_point]
    bias = torch.randn(n, generator=g).to(dtype)
    return x, w_q, scale, zp, bias


def assert_within_dot_product_bound(got, x, w_q, scale, zp, bias, dtype):
    """|got − exact| ≤ c·eps(dtype)·(Σ_k |x_k|·|w_k| + |exact|): a rounding bound of a dot product."""
    want = weight_only_int8_reference(x, w_q, scale, zp, bias, torch.float64)
    magnitude = x.double().abs() @ dequantize_int8_weight(w_q, scale, zp).abs().T
    bound = 4 * torch.finfo(dtype).eps * (magnitude + want.abs()) + 1e-30
    err = (got.double() - want).abs()
    assert bool((err <= bound).all()), f"max err/bound {(err / bound).max().item():.3f}"


@pytest.mark.parametrize("kernel", CPU_KERNELS, ids=lambda k: k.name)
@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("zero_point", ["none", "zero", "negative", "mixed"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(kernel, m, k, n, zero_point, dtype):
    ok, _ = kernel.can_implement(WeightOnlyInt8Config(k, n, dtype, zero_point in ("negative", "mixed")))
    if not ok:
        pytest.skip(f"{kernel.name} does not take {dtype} activations")
    x, w_q, scale, zp, bias = case(m, k, n, zero_point, dtype)
    layer = make_weight_only_int8(w_q, scale, zp, dtype, kernel=kernel)
    got = layer(x, bias)
    assert got.shape == (m, n) and got.dtype == dtype
    assert_within_dot_product_bound(got, x, w_q, scale, zp, bias, dtype)


def test_zero_point_is_subtracted():
    # ERRATA 1: w = (q − offset)·scale. With q == offset the weight is zero.
    w_q = torch.full((2, 4), 10, dtype=torch.int8)
    zp = torch.tensor([10.0, -10.0])
    w = dequantize_int8_weight(w_q, torch.ones(2), zp)
    assert w[0].tolist() == [0.0] * 4 and w[1].tolist() == [20.0] * 4
    for kernel in CPU_KERNELS:
        x = torch.ones(1, 4, dtype=torch.bfloat16)
        y = make_weight_only_int8(w_q, torch.ones(2), zp, torch.bfloat16, kernel=kernel)(x, None)
        assert y.float().tolist() == [[0.0, 80.0]], kernel.name


def test_selection():
    w_q = torch.ones(16, 32, dtype=torch.int8)
    assert isinstance(
        make_weight_only_int8(w_q, torch.ones(16), None, torch.bfloat16), Int8PackWeightOnlyInt8
    )
    assert isinstance(
        make_weight_only_int8(w_q, torch.ones(16), None, torch.float32), DequantMatmulWeightOnlyInt8
    )
    # An all-zero zero point is dropped (no correction term).
    assert make_weight_only_int8(w_q, torch.ones(16), torch.zeros(16), torch.bfloat16).zero_point is None
    assert ReferenceWeightOnlyInt8.can_implement(None)[0]
