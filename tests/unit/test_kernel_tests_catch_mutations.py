"""The kernel tests' comparisons reject a 1 % scale error and a flipped zero point / offset.

Each case runs a real kernel on the inputs of its kernel test (the same case
generators) and on mutated inputs (a scale × 1.01, a zero point or offset with
its sign flipped), and checks the outputs against the exact value of the
UNMUTATED math with the very helper and bound the kernel test uses
(``kernel_bounds``): the real kernel passes, every mutant is rejected.
"""

import pytest
import torch
from kernel_bounds import (
    bound_violations,
    dynamic_quant_value,
    dynamic_scale_expectation,
    kronecker_bound,
    kv_dequant_expectation,
    kv_quant_value,
    quantization_mismatches,
    routed_experts_expectation,
    scaled_int8_mm_expectation,
    static_quant_value,
    weight_only_expectation,
)
from test_kernels_grouped_experts import make_experts, routing
from test_kernels_int4 import int4_case
from test_kernels_scaled_int8_mm import random_case
from test_kernels_weight_only_int8 import case as int8_case

from vllm_modelslim.kernels import (
    kronecker_transform,
    kronecker_transform_reference,
    quantize_dynamic_per_token,
    quantize_static_per_tensor,
)
from vllm_modelslim.kernels.grouped_experts import grouped_experts_forward
from vllm_modelslim.kernels.kv_cache_int8 import dequantize_kv_int8, quantize_kv_int8
from vllm_modelslim.kernels.scaled_int8_mm import (
    SCALED_INT8_MM_KERNELS,
    ScaledInt8MMConfig,
    make_scaled_int8_mm,
)
from vllm_modelslim.kernels.weight_only import (
    WEIGHT_ONLY_INT4_KERNELS,
    WEIGHT_ONLY_INT8_KERNELS,
    make_weight_only_int4,
    make_weight_only_int8,
)

SCALE_ERROR = 1.01


def rejected(got, exact, bound) -> bool:
    return bool(bound_violations(got, exact, bound).any())


def check(real, mutants, exact, bound):
    assert not rejected(real, exact, bound), "the real kernel must pass"
    for name, got in mutants.items():
        assert rejected(got, exact, bound), f"mutation '{name}' is not caught"


def _cpu(kernels):
    return [k for k in kernels if k.is_supported("cpu")[0]]


def _build(make, *args, kernel):
    """The kernel forced by ``make``, or a skip where it cannot run this case."""
    try:
        return make(*args, kernel=kernel)
    except RuntimeError as refused:
        pytest.skip(str(refused))


@pytest.mark.parametrize("kernel", _cpu(WEIGHT_ONLY_INT8_KERNELS), ids=lambda k: k.name)
@pytest.mark.parametrize("m", [1, 7, 33])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_weight_only_int8(kernel, m, dtype):
    x, w_q, scale, zp, bias = int8_case(m, 256, 64, "mixed", dtype)

    def run(s, z):
        return _build(make_weight_only_int8, w_q, s, z, dtype, kernel=kernel)(x, bias)

    exact, bound = weight_only_expectation("int8", kernel.name, x, w_q, scale, zp, bias)
    check(
        run(scale, zp), {"scale": run(scale * SCALE_ERROR, zp), "zero point": run(scale, -zp)}, exact, bound
    )


@pytest.mark.parametrize("kernel", _cpu(WEIGHT_ONLY_INT4_KERNELS), ids=lambda k: k.name)
@pytest.mark.parametrize("m", [1, 7, 33, 65])  # 65: cpu_int4pack's many-rows path on either GEMM route
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_weight_only_int4(kernel, m, dtype):
    x, q, scale, zp, bias = int4_case(m, 64, 256, 64, True, dtype)

    def run(s, z):
        return _build(make_weight_only_int4, q, s, z, dtype, kernel=kernel)(x, bias)

    exact, bound = weight_only_expectation("int4", kernel.name, x, q, scale, zp, bias)
    check(
        run(scale, zp), {"scale": run(scale * SCALE_ERROR, zp), "zero point": run(scale, -zp)}, exact, bound
    )


@pytest.mark.parametrize("kernel", _cpu(SCALED_INT8_MM_KERNELS), ids=lambda k: k.name)
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_scaled_int8_mm(kernel, out_dtype):
    x_q, w_q, x_scale, w_scale, int_bias, bias = random_case(9, 256, 32, seed=3)
    if not kernel.can_implement(ScaledInt8MMConfig(256, 32, has_int_bias=True))[0]:
        int_bias = None
    bias = bias.to(out_dtype)

    def run(ws=w_scale, xs=x_scale, ib=int_bias):
        return make_scaled_int8_mm(w_q, ws, ib, kernel=kernel)(x_q, xs, bias, out_dtype)

    mutants = {
        "weight scale": run(ws=w_scale * SCALE_ERROR),
        "activation scale": run(xs=x_scale * SCALE_ERROR),
    }
    if int_bias is not None:  # quant_bias carries −o·Σ_k W_q: the offset enters here
        mutants["int bias (offset) sign"] = run(ib=-int_bias)
    exact, bound = scaled_int8_mm_expectation(x_q, x_scale, w_q, w_scale, int_bias, bias, out_dtype)
    check(run(), mutants, exact, bound)


@pytest.mark.parametrize("kernel", _cpu(SCALED_INT8_MM_KERNELS), ids=lambda k: k.name)
def test_grouped_int8_mm(kernel):
    if not kernel.can_implement(ScaledInt8MMConfig(256, 24, "cpu", 64))[0]:
        pytest.skip(f"{kernel.name} has per-channel scales only")
    g = torch.Generator().manual_seed(1)
    x_q = torch.randint(-128, 128, (9, 256), dtype=torch.int8, generator=g)
    w_q = torch.randint(-8, 8, (24, 256), dtype=torch.int8, generator=g)
    x_scale = torch.rand(9, generator=g) + 0.1
    scale = torch.rand(24, 4, generator=g) * 0.01 + 1e-3
    one_group = scale.clone()
    one_group[:, 1] *= SCALE_ERROR

    def run(s):
        return make_scaled_int8_mm(w_q, s, kernel=kernel)(x_q, x_scale, None, torch.float32)

    exact, bound = scaled_int8_mm_expectation(x_q, x_scale, w_q, scale)
    check(
        run(scale),
        {"all scales": run(scale * SCALE_ERROR), "one group's scales": run(one_group)},
        exact,
        bound,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_static_activation_quantization(dtype):
    torch.manual_seed(0)
    x = (torch.randn(7, 250) * 3).to(dtype)
    scale, offset = 0.037, -5.0
    value, slack = static_quant_value(x, scale, offset)
    assert not bool(
        quantization_mismatches(quantize_static_per_tensor(x, scale, offset), value, slack, -128, 127).any()
    )
    for name, q in {
        "scale": quantize_static_per_tensor(x, scale * SCALE_ERROR, offset),
        "offset sign": quantize_static_per_tensor(x, scale, -offset),
    }.items():
        assert bool(quantization_mismatches(q, value, slack, -128, 127).any()), name


@pytest.mark.parametrize("bits,clip", [(8, 1.0), (4, 1.0), (4, 0.9)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dynamic_activation_quantization(bits, clip, dtype):
    torch.manual_seed(1)
    x = (torch.randn(9, 250) * torch.rand(9, 1) * 10).to(dtype)
    qmax = 2 ** (bits - 1) - 1
    exact_s, s_bound = dynamic_scale_expectation(x, bits, clip)
    q, s = quantize_dynamic_per_token(x, bits=bits, clip_ratio=clip)
    assert not rejected(s, exact_s, s_bound)
    assert not bool(quantization_mismatches(q, *dynamic_quant_value(x, s), -qmax - 1, qmax).any())
    # A kernel whose scale is 1 % off: its scale fails the scale bound, and its q (re-derived from the
    # correct scale) fails the integer comparison.
    bad_s = s * SCALE_ERROR
    bad_q = torch.round(x.float() / bad_s.unsqueeze(-1)).clamp(-qmax - 1, qmax).to(torch.int8)
    assert rejected(bad_s, exact_s, s_bound)
    assert bool(quantization_mismatches(bad_q, *dynamic_quant_value(x, s), -qmax - 1, qmax).any())


@pytest.mark.parametrize("left,right", [(16, 16), (4, None), (None, 8)])
def test_kronecker_transform(left, right):
    torch.manual_seed(3)
    x = torch.randn(5, 256)
    l_mat = torch.randn(left, left) if left else None
    r_mat = torch.randn(right, right) if right else None
    exact = kronecker_transform_reference(x, l_mat, r_mat)
    bound = kronecker_bound(x, l_mat, r_mat)
    mutants = {}
    if l_mat is not None:
        mutants["left × 1.01"] = kronecker_transform(x, l_mat * SCALE_ERROR, r_mat)
        mutants["left not transposed"] = kronecker_transform(x, l_mat.T, r_mat)
    if r_mat is not None:
        mutants["right × 1.01"] = kronecker_transform(x, l_mat, r_mat * SCALE_ERROR)
        mutants["right transposed"] = kronecker_transform(x, l_mat, r_mat.T)
    check(kronecker_transform(x, l_mat, r_mat), mutants, exact, bound)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_routed_experts(dtype):
    """No offset here; the combine's scale is the routing weight."""
    experts = make_experts(6, 32)
    x = torch.randn(17, 32, generator=torch.Generator().manual_seed(4)).to(dtype)
    weights, ids = routing(17, 2, 6)
    exact, bound = routed_experts_expectation(x, weights, ids, experts)
    real = grouped_experts_forward(x, weights, ids, experts)
    check(
        real,
        {"routing weight": grouped_experts_forward(x, weights * SCALE_ERROR, ids, experts)},
        exact,
        bound,
    )


def test_kv_cache_int8():
    g = torch.Generator().manual_seed(0)
    scale = torch.rand(2, 4, generator=g) * 0.05 + 0.01
    offset = torch.randint(-40, 40, (2, 4), generator=g).float()
    x = torch.randn(64, 2, 4, generator=g) * 2
    value, slack = kv_quant_value(x, scale, offset)

    def quantize_rejected(q):
        return bool(quantization_mismatches(q, value, slack, -128, 127).any())

    assert not quantize_rejected(quantize_kv_int8(x, scale, offset))
    assert quantize_rejected(quantize_kv_int8(x, scale * SCALE_ERROR, offset))
    assert quantize_rejected(quantize_kv_int8(x, scale, -offset))
    q = torch.randint(-128, 128, (16, 2, 4), dtype=torch.int8, generator=g)
    for dtype in (torch.bfloat16, torch.float32):
        exact, bound = kv_dequant_expectation(q, scale, offset, dtype)
        mutants = {
            "scale": dequantize_kv_int8(q, scale * SCALE_ERROR, offset, dtype),
            "offset sign": dequantize_kv_int8(q, scale, -offset, dtype),
        }
        check(dequantize_kv_int8(q, scale, offset, dtype), mutants, exact, bound)
