import pytest
import torch
from kernel_bounds import (
    assert_quantized,
    assert_within,
    dynamic_quant_value,
    dynamic_scale_expectation,
    static_quant_value,
)

from vllm_modelslim.kernels import (
    quantize_dynamic_per_token,
    quantize_dynamic_per_token_reference,
    quantize_static_per_tensor,
    quantize_static_per_tensor_reference,
)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def test_reference_rounds_half_to_even_and_saturates():
    x = torch.tensor([[0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 1000.0, -1000.0]])
    assert quantize_static_per_tensor_reference(x, 1.0, 0.0).tolist() == [[0, 2, 2, 0, -2, -2, 127, -128]]
    assert quantize_static_per_tensor_reference(x, 1.0, 1.0).tolist() == [[2, 2, 4, 0, 0, -2, 127, -128]]


def test_fp32_arithmetic_differs_from_the_exact_formula_only_next_to_ties():
    """The NPU (and both our functions) compute x·(1/s) + o in fp32; the exact float64 value of the
    formula can lie on the other side of a .5 tie. Stated here: such values exist, and they are the
    only differences (one step, within the fp32 rounding of a half-integer)."""
    scale = 0.1  # 1/s is not exact in fp32
    x = ((torch.arange(-130, 124) + 0.5) * scale).to(torch.float32).reshape(1, -1)  # x/s next to k + 0.5
    q = quantize_static_per_tensor(x, scale, 3.0)
    assert torch.equal(q, quantize_static_per_tensor_reference(x, scale, 3.0))
    value, slack = static_quant_value(x, scale, 3.0)
    exact_q = torch.round(value).clamp(-128, 127)
    assert bool((q.double() != exact_q).any())  # the arithmetic matters here
    assert_quantized(q, value, slack)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 13), (7, 250), (64, 256)])
@pytest.mark.parametrize("offset", [0.0, -5.0, 17.0, -128.0, 127.0])
def test_static_matches_reference(dtype, shape, offset):
    torch.manual_seed(0)
    x = (torch.randn(shape) * 3).to(dtype)
    scale = 0.037
    q = quantize_static_per_tensor(x, scale, offset)
    assert q.dtype == torch.int8 and q.shape == x.shape
    # Reference: the same fp32 operations written from the spec in float64: the same bits.
    assert torch.equal(q, quantize_static_per_tensor_reference(x, scale, offset))
    # Exact formula: one step apart at most, and only next to a tie (kernel_bounds).
    assert_quantized(q, *static_quant_value(x, scale, offset))


def test_static_saturates_at_int8_limits():
    x = torch.tensor([[-1e6, -3.0, 0.0, 3.0, 1e6]])
    q = quantize_static_per_tensor(x, 0.01, 10.0)
    assert q.tolist() == [[-128, -128, 10, 127, 127]]


def test_static_offset_is_added_after_scaling():
    x = torch.tensor([[0.5, -0.5, 1.0]])
    assert quantize_static_per_tensor(x, 0.25, -3).tolist() == [[-1, -5, 1]]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 13), (9, 250), (33, 256)])
def test_dynamic_matches_reference(dtype, shape):
    torch.manual_seed(1)
    x = (torch.randn(shape) * torch.rand(shape[0], 1) * 10).to(dtype)
    q, s = quantize_dynamic_per_token(x)
    q_ref, s_ref = quantize_dynamic_per_token_reference(x)
    assert q.dtype == torch.int8 and s.dtype == torch.float32 and s.shape == (shape[0],)
    assert torch.equal(s, s_ref) and torch.equal(q, q_ref)
    exact_s, s_bound = dynamic_scale_expectation(x, 8, 1.0, ops=1)
    assert_within(s, exact_s, s_bound)
    assert_quantized(q, *dynamic_quant_value(x, s))
    # Every row reaches the symmetric limit and stays inside ±127.
    assert torch.equal(q.abs().amax(dim=-1), torch.full((shape[0],), 127, dtype=torch.int8))


def test_dynamic_zero_row_and_reconstruction():
    x = torch.tensor([[0.0, 0.0, 0.0], [1.27, -2.54, 0.01]])
    q, s = quantize_dynamic_per_token(x)
    assert q[0].tolist() == [0, 0, 0] and s[0].item() == 1.0
    assert q[1].tolist() == [64, -127, 0]
    torch.testing.assert_close(q[1].float() * s[1], x[1], atol=s[1].item() / 2, rtol=0)
