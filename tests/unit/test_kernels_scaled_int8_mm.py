import gc

import pytest
import torch
from kernel_bounds import assert_within, scaled_int8_mm_expectation

from vllm_modelslim.kernels.scaled_int8_mm import (
    SCALED_INT8_MM_KERNELS,
    CpuInt8VnniScaledInt8MM,
    ReferenceScaledInt8MM,
    ScaledInt8MMConfig,
    TorchIntMMScaledInt8MM,
    VllmOnednnScaledInt8MM,
    VllmOnednnStaticScaledInt8MM,
    make_scaled_int8_mm,
    scaled_int8_mm_reference,
)
from vllm_modelslim.kernels.scaled_int8_mm.cpu_int8_vnni import ops_unavailable as vnni_ops_unavailable
from vllm_modelslim.kernels.selection import DISABLED_KERNELS_ENV

CPU_KERNELS = [k for k in SCALED_INT8_MM_KERNELS if k.is_supported("cpu")[0]]
SHAPES = [(1, 13, 7), (1, 250, 70), (5, 250, 70), (17, 256, 64), (64, 1000, 24)]


def random_case(m, k, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x_q = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=g)
    w_q = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g)
    x_scale = torch.rand(m, generator=g) * 0.1 + 1e-3
    w_scale = torch.rand(n, generator=g) * 0.01 + 1e-4
    int_bias = torch.randint(-(2**20), 2**20, (n,), dtype=torch.int32, generator=g)
    bias = torch.randn(n, generator=g)
    return x_q, w_q, x_scale, w_scale, int_bias, bias


def skip_unless_implements(kernel, k, n, int_bias=True, group_size=0):
    ok, why = kernel.can_implement(ScaledInt8MMConfig(k, n, "cpu", group_size, int_bias))
    if not ok:
        pytest.skip(f"{kernel.name}: {why}")


@pytest.mark.parametrize("kernel", CPU_KERNELS, ids=lambda k: k.name)
@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("per_token", [True, False])
@pytest.mark.parametrize("with_int_bias", [True, False])
def test_matches_float64_reference(kernel, m, k, n, per_token, with_int_bias):
    skip_unless_implements(kernel, k, n, with_int_bias)
    x_q, w_q, x_scale, w_scale, int_bias, bias = random_case(m, k, n)
    x_scale = x_scale if per_token else None
    int_bias = int_bias if with_int_bias else None
    mm = make_scaled_int8_mm(w_q, w_scale, int_bias, kernel=kernel)
    got = mm(x_q, x_scale, bias, torch.float32)
    want = scaled_int8_mm_reference(x_q, x_scale, w_q, w_scale, int_bias, bias)
    assert got.shape == (m, n) and got.dtype == torch.float32
    # Exact int32 accumulation; only the fp32 epilogue rounds (kernel_bounds).
    exact, bound = scaled_int8_mm_expectation(x_q, x_scale, w_q, w_scale, int_bias, bias)
    torch.testing.assert_close(want, exact, rtol=1e-12, atol=0)
    assert_within(got, exact, bound)


@pytest.mark.parametrize("kernel", CPU_KERNELS, ids=lambda k: k.name)
def test_accumulation_is_exact_at_int8_limits(kernel):
    k, n = 1008, 16  # multiples of 16: every kernel's shape constraint
    x_q = torch.full((3, k), -128, dtype=torch.int8)
    x_q[1] = 127
    w_q = torch.full((n, k), -128, dtype=torch.int8)
    needs_int_bias = not kernel.can_implement(ScaledInt8MMConfig(k, n))[0]
    int_bias = torch.zeros(n, dtype=torch.int32) if needs_int_bias else None
    mm = make_scaled_int8_mm(w_q, torch.ones(n), int_bias, kernel=kernel)
    got = mm(x_q, None, None, torch.float64)
    assert got[0, 0].item() == 128 * 128 * k
    assert got[1, 0].item() == -127 * 128 * k


@pytest.mark.parametrize("kernel", CPU_KERNELS, ids=lambda k: k.name)
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
def test_low_precision_outputs_round_once(kernel, out_dtype):
    x_q, w_q, x_scale, w_scale, int_bias, bias = random_case(9, 256, 32, seed=3)
    int_bias = int_bias if kernel.can_implement(ScaledInt8MMConfig(256, 32, has_int_bias=True))[0] else None
    mm = make_scaled_int8_mm(w_q, w_scale, int_bias, kernel=kernel)
    got = mm(x_q, x_scale, bias.to(out_dtype), out_dtype)
    assert got.dtype == out_dtype
    # One rounding to the output dtype after the fp32 epilogue.
    exact, bound = scaled_int8_mm_expectation(
        x_q, x_scale, w_q, w_scale, int_bias, bias.to(out_dtype), out_dtype
    )
    assert_within(got, exact, bound)


def test_int_mm_refuses_k_of_one_and_selection_falls_back():
    ok, why = TorchIntMMScaledInt8MM.can_implement(ScaledInt8MMConfig(1, 5))
    assert not ok and "K = 1" in why
    mm = make_scaled_int8_mm(torch.ones(5, 1, dtype=torch.int8), torch.ones(5))
    assert isinstance(mm, (VllmOnednnScaledInt8MM, ReferenceScaledInt8MM))
    assert mm(torch.full((2, 1), 3, dtype=torch.int8), None, None, torch.float32).tolist() == [[3.0] * 5] * 2


def test_forced_kernel_that_cannot_run_is_refused():
    with pytest.raises(RuntimeError, match="torch_int_mm"):
        make_scaled_int8_mm(torch.ones(5, 1, dtype=torch.int8), torch.ones(5), kernel=TorchIntMMScaledInt8MM)


def test_fast_kernel_is_selected_on_cpu(monkeypatch):
    x_q, w_q, *_ = random_case(2, 64, 16)
    own = CpuInt8VnniScaledInt8MM.is_supported("cpu")[0] and vnni_ops_unavailable() is None
    onednn = VllmOnednnScaledInt8MM.is_supported("cpu")[0]
    int_bias = torch.ones(16, dtype=torch.int32)
    if own:  # the project's VNNI op first, with or without an int32 bias
        assert isinstance(make_scaled_int8_mm(w_q, torch.ones(16)), CpuInt8VnniScaledInt8MM)
        assert isinstance(make_scaled_int8_mm(w_q, torch.ones(16), int_bias), CpuInt8VnniScaledInt8MM)
    monkeypatch.setenv(DISABLED_KERNELS_ENV, CpuInt8VnniScaledInt8MM.name)
    fast = VllmOnednnScaledInt8MM if onednn else TorchIntMMScaledInt8MM
    assert isinstance(make_scaled_int8_mm(w_q, torch.ones(16)), fast)
    # an int32 bias must enter exactly: oneDNN's static handler as a zero point and a float32 remainder
    with_bias = make_scaled_int8_mm(w_q, torch.ones(16), int_bias)
    assert isinstance(with_bias, VllmOnednnStaticScaledInt8MM if onednn else TorchIntMMScaledInt8MM)
    assert isinstance(make_scaled_int8_mm(w_q, torch.ones(16, 2)), TorchIntMMScaledInt8MM)  # per-group


needs_onednn = pytest.mark.skipif(
    not VllmOnednnScaledInt8MM.is_supported("cpu")[0], reason="needs vLLM oneDNN and VNNI/AMX"
)


@needs_onednn
@pytest.mark.parametrize("m,k,n", [(1, 384, 1152), (33, 1536, 384), (5, 250, 70), (1, 13, 7)])
def test_onednn_kernel_is_bit_identical_to_int_mm(m, k, n):
    """Same exact accumulator, same epilogue order: the two CPU paths give the same bits."""
    x_q, w_q, x_scale, w_scale, _, bias = random_case(m, k, n, seed=m)
    onednn = make_scaled_int8_mm(w_q, w_scale, kernel=VllmOnednnScaledInt8MM)
    int_mm = make_scaled_int8_mm(w_q, w_scale, kernel=TorchIntMMScaledInt8MM)
    gc.collect()  # the handler must not depend on temporaries freed after construction
    for out_dtype in (torch.float32, torch.bfloat16):
        for scale in (x_scale, None):
            assert torch.equal(onednn(x_q, scale, bias, out_dtype), int_mm(x_q, scale, bias, out_dtype))


@needs_onednn
def test_onednn_kernel_holds_the_only_weight_copy():
    _, w_q, *_ = random_case(2, 64, 16)
    kernel = make_scaled_int8_mm(w_q, torch.ones(16), kernel=VllmOnednnScaledInt8MM)
    assert kernel.weight is None and kernel.external_weight_bytes == w_q.numel() and kernel.copies_weight


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("m", [1, 5, 40])
def test_cuda_int_mm_matches_reference(m):
    x_q, w_q, x_scale, w_scale, int_bias, bias = random_case(m, 256, 64)
    mm = make_scaled_int8_mm(w_q.cuda(), w_scale.cuda(), int_bias.cuda())
    got = mm(x_q.cuda(), x_scale.cuda(), bias.cuda(), torch.float32).cpu()
    assert_within(got, *scaled_int8_mm_expectation(x_q, x_scale, w_q, w_scale, int_bias, bias))
