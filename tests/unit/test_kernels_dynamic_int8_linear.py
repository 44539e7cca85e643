"""The fused dynamic int8 linear kernel against exact integer products and the spec's float64 math."""

import pytest
import torch

from vllm_modelslim.kernels import quantize_dynamic_per_token, scaled_int8_mm_reference
from vllm_modelslim.kernels.dynamic_int8_linear import (
    DynamicInt8LinearConfig,
    VllmCpuInt8ScaledMMWithQuant,
    make_dynamic_int8_linear,
)
from vllm_modelslim.kernels.selection import DISABLED_KERNELS_ENV
from vllm_modelslim.schemes.base import LayerContext
from vllm_modelslim.schemes.linear.w8a8_dynamic import W8A8DynamicLinearScheme

FUSED_HERE, WHY_NOT = VllmCpuInt8ScaledMMWithQuant.is_supported("cpu")
needs_fused = pytest.mark.skipif(not FUSED_HERE, reason=f"fused dynamic int8 linear: {WHY_NOT}")


def spec_float64(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``(round(x/s_x)·Wᵀ)·s_x·s_w`` in float64 with exact per-token quantization."""
    x = x.double()
    s_x = x.abs().amax(dim=-1, keepdim=True) / 127
    return (torch.round(x / s_x) @ weight.double().t()) * s_x * scale.double()


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b).norm() / b.norm())


@needs_fused
@pytest.mark.parametrize("rows", [1, 3, 64])
@pytest.mark.parametrize("low,high,k", [(-127, 128, 256), (-8, 8, 2048)], ids=["int8_k256", "int4_k2048"])
def test_integer_sums_are_exact(rows, low, high, k):
    """Integer activations whose row maximum is 127 quantize to themselves (s_x = 1): the kernel's
    result is then the exact integer product times a power-of-two scale, rounded once to bf16
    (sums below 2^24, where float32 holds them exactly). A saturating or 16-bit accumulation fails."""
    g = torch.Generator().manual_seed(rows)
    n = 96
    weight = torch.full((n, k), high - 1, dtype=torch.int8)  # worst case for saturation: all at the top
    weight[n // 2 :] = torch.randint(low, high, (n - n // 2, k), generator=g, dtype=torch.int8)
    x = torch.randint(-127, 128, (rows, k), generator=g).float()
    x[:, 0] = 127.0
    x[:, 1 : k // 2] = 127.0  # large same-sign sums
    scale = torch.full((n,), 2.0**-12)
    kernel = make_dynamic_int8_linear(weight, scale, torch.bfloat16)
    assert isinstance(kernel, VllmCpuInt8ScaledMMWithQuant)
    out = kernel(x.to(torch.bfloat16), None)
    exact = (x.double() @ weight.double().t()) * 2.0**-12
    assert torch.equal(out, exact.to(torch.bfloat16))


@needs_fused
@pytest.mark.parametrize("rows,k,n", [(1, 256, 96), (5, 256, 96), (64, 2048, 6144)])
def test_as_close_to_the_spec_as_quantizer_and_gemm(rows, k, n):
    g = torch.Generator().manual_seed(k + rows)
    weight = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    scale = torch.rand(n, generator=g) * 1e-3 + 1e-4
    x = (torch.randn(rows, k, generator=g) * torch.rand(rows, 1, generator=g) * 10).to(torch.bfloat16)
    bias = torch.randn(n, generator=g).to(torch.bfloat16)
    fused = make_dynamic_int8_linear(weight, scale, torch.bfloat16)(x, bias)
    x_q, s_x = quantize_dynamic_per_token(x)
    two_kernels = scaled_int8_mm_reference(x_q, s_x, weight, scale, bias=bias).to(torch.bfloat16)
    oracle = spec_float64(x, weight, scale) + bias.double()
    fused_error, two_kernel_error = relative_error(fused, oracle), relative_error(two_kernels, oracle)
    print(f"\nrelative error vs float64 spec: fused {fused_error:.2e}, two kernels {two_kernel_error:.2e}")
    assert fused.dtype == torch.bfloat16 and fused.shape == (rows, n)
    assert fused_error <= 1.2 * two_kernel_error and fused_error < 1e-2


@pytest.mark.parametrize(
    "change,why",
    [
        (dict(activation_dtype=torch.float32), "bf16 activations only"),
        (dict(in_features=48), "multiples of 32"),
        (dict(rank_row_max=True), "tensor-parallel"),
    ],
)
def test_layers_the_fused_kernel_cannot_run_keep_two_kernels(change, why):
    base = dict(device_type="cpu", activation_dtype=torch.bfloat16, in_features=64, out_features=32)
    ok, reason = VllmCpuInt8ScaledMMWithQuant.can_implement(DynamicInt8LinearConfig(**{**base, **change}))
    assert not ok and why in reason
    weight = torch.ones(32, change.get("in_features", 64), dtype=torch.int8)
    dtype = change.get("activation_dtype", torch.bfloat16)
    assert make_dynamic_int8_linear(weight, torch.ones(32), dtype, change.get("rank_row_max", False)) is None


def _w8a8_dynamic_layer(dtype: torch.dtype, n: int = 64, k: int = 128) -> torch.nn.Module:
    g = torch.Generator().manual_seed(5)
    layer = torch.nn.Module()
    tensors = {
        "weight": torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8),
        "weight_scale": torch.rand(n, 1, generator=g) * 1e-3 + 1e-4,
        "weight_offset": torch.zeros(n, 1),
    }
    for name, tensor in tensors.items():
        setattr(layer, name, torch.nn.Parameter(tensor, requires_grad=False))
    layer.logical_widths = [n]
    layer.modelslim_params_dtype = dtype
    return layer


def _scheme() -> W8A8DynamicLinearScheme:
    from vllm_modelslim.format.description import QuantDescription

    context = LayerContext(
        "model.layers.0.mlp.down_proj", "W8A8_DYNAMIC", ("down",), QuantDescription("<t>", {})
    )
    return W8A8DynamicLinearScheme(context)


@needs_fused
def test_bf16_w8a8_dynamic_layer_runs_the_fused_kernel(monkeypatch):
    x = torch.randn(3, 1, 128, generator=torch.Generator().manual_seed(6)).to(torch.bfloat16)
    scheme, layer = _scheme(), _w8a8_dynamic_layer(torch.bfloat16)
    weight, scale = layer.weight.data.clone(), layer.weight_scale.data.reshape(-1).clone()
    scheme.process_weights_after_loading(layer)
    assert (
        isinstance(layer.modelslim_kernel, VllmCpuInt8ScaledMMWithQuant) and layer.modelslim_act_quant is None
    )
    y = scheme.apply(layer, x, None)
    assert y.shape == (3, 1, 64) and y.dtype == torch.bfloat16
    assert relative_error(y.reshape(3, 64), spec_float64(x.reshape(3, 128), weight, scale)) < 1e-2

    monkeypatch.setenv(DISABLED_KERNELS_ENV, VllmCpuInt8ScaledMMWithQuant.name)
    layer = _w8a8_dynamic_layer(torch.bfloat16)
    scheme.process_weights_after_loading(layer)
    assert not isinstance(layer.modelslim_kernel, VllmCpuInt8ScaledMMWithQuant)
    assert layer.modelslim_act_quant is not None


def test_float32_w8a8_dynamic_layer_keeps_quantizer_and_gemm():
    scheme, layer = _scheme(), _w8a8_dynamic_layer(torch.float32)
    scheme.process_weights_after_loading(layer)
    assert not isinstance(layer.modelslim_kernel, VllmCpuInt8ScaledMMWithQuant)
    assert layer.modelslim_act_quant is not None


def test_scales_that_are_not_per_channel_are_refused():
    with pytest.raises(ValueError, match="per-channel scales expected: 16 for 32 rows"):
        make_dynamic_int8_linear(torch.ones(32, 64, dtype=torch.int8), torch.ones(16), torch.bfloat16)
