import pytest
import torch

from vllm_modelslim.kernels import (
    quantize_dynamic_per_token,
    quantize_dynamic_per_token_reference,
    quantize_static_per_tensor,
    quantize_static_per_tensor_reference,
)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def mostly_equal(a, b):
    """Both are defined in fp32 arithmetic: bit-identical."""
    assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 13), (7, 250), (64, 256)])
@pytest.mark.parametrize("offset", [0.0, -5.0, 17.0, -128.0, 127.0])
def test_static_matches_reference(dtype, shape, offset):
    torch.manual_seed(0)
    x = (torch.randn(shape) * 3).to(dtype)
    scale = 0.037
    q = quantize_static_per_tensor(x, scale, offset)
    assert q.dtype == torch.int8 and q.shape == x.shape
    mostly_equal(q, quantize_static_per_tensor_reference(x, scale, offset))


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
    assert torch.equal(s, s_ref)
    mostly_equal(q, q_ref)
    # Every row reaches the symmetric limit and stays inside ±127.
    assert torch.equal(q.abs().amax(dim=-1), torch.full((shape[0],), 127, dtype=torch.int8))


def test_dynamic_zero_row_and_reconstruction():
    x = torch.tensor([[0.0, 0.0, 0.0], [1.27, -2.54, 0.01]])
    q, s = quantize_dynamic_per_token(x)
    assert q[0].tolist() == [0, 0, 0] and s[0].item() == 1.0
    assert q[1].tolist() == [64, -127, 0]
    torch.testing.assert_close(q[1].float() * s[1], x[1], atol=s[1].item() / 2, rtol=0)
