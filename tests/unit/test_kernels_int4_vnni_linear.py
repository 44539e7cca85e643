"""The project's own int4 × int8 VNNI kernel (``cpu_int4_vnni``) against the two-kernel path, bit for bit.

The two-kernel path is the torch per-token quantizer plus ``torch._int_mm``
with the float32 epilogue (``(acc·s_x)·s_w + b``); the compiled kernel performs
the same float32 operations in the same order, so any difference (a nibble
layout slip, a wrong tie rounding, a fused multiply-add, a lost row) fails.
"""

import pytest
import torch
from no_compiler import run_without_a_compiler

from vllm_modelslim.format.description import QuantDescription
from vllm_modelslim.kernels import make_scaled_int8_mm, quantize_dynamic_per_token
from vllm_modelslim.kernels.cpp_extension import load_cpu_extension
from vllm_modelslim.kernels.cpu_int4_vnni import int4_vnni_unavailable, pack_int4_vnni
from vllm_modelslim.kernels.dynamic_int8_linear import (
    DynamicInt8LinearConfig,
    Int4VnniLinear,
    VllmCpuInt8ScaledMMWithQuant,
    make_dynamic_int8_linear,
)
from vllm_modelslim.kernels.scaled_int8_mm.torch_int_mm import TorchIntMMScaledInt8MM
from vllm_modelslim.kernels.selection import DISABLED_KERNELS_ENV
from vllm_modelslim.schemes.base import LayerContext
from vllm_modelslim.schemes.linear.w4a4_dynamic import W4A4DynamicLinearScheme

WHY_NOT = int4_vnni_unavailable()  # the ISA, then the C++ build (no compiler: skipped, with the reason)
needs_kernel = pytest.mark.skipif(WHY_NOT is not None, reason=f"cpu_int4_vnni: {WHY_NOT}")
needs_isa = pytest.mark.skipif(not Int4VnniLinear.is_supported("cpu")[0], reason="no AVX512-VNNI")


def two_kernel_path(x, weight, scale, bias, bits):
    """The torch quantizer and ``torch._int_mm`` with the scaled-int8 float32 epilogue."""
    x_q, s_x = quantize_dynamic_per_token(x, bits=bits)
    gemm = make_scaled_int8_mm(weight, scale, kernel=TorchIntMMScaledInt8MM)
    return gemm(x_q, s_x, bias, x.dtype)


def int4_layer(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randint(-8, 8, (n, k), generator=g, dtype=torch.int8)
    return weight, torch.rand(n, generator=g) * 1e-2 + 1e-4, torch.randn(n, generator=g)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize(
    "rows,k,n", [(1, 2048, 256), (3, 64, 48), (8, 256, 32), (13, 512, 96), (70, 128, 16)]
)
def test_same_bits_as_quantizer_and_int_mm(dtype, bits, rows, k, n):
    weight, scale, bias = int4_layer(n, k, rows + k)
    g = torch.Generator().manual_seed(rows)
    x = (torch.randn(rows, k, generator=g) * torch.rand(rows, 1, generator=g) * 8).to(dtype)
    x[rows // 2] = 0  # a zero row: scale 1, output the bias
    if rows > 2:  # scale exactly 1 and exact .5 ties: half-to-even decides
        x[-1] = (torch.arange(k).remainder(8) - 4 + 0.5).to(dtype)
        x[-1, 0] = 2 ** (bits - 1) - 1
    kernel = make_dynamic_int8_linear(weight, scale, dtype, weight_bits=4, activation_bits=bits)
    assert isinstance(kernel, Int4VnniLinear)
    for b in (bias, None):
        out = kernel(x, b)
        assert out.dtype == dtype and out.shape == (rows, n)
        assert torch.equal(out, two_kernel_path(x, weight, scale, b, bits))


@needs_kernel
def test_extreme_sums_are_exact():
    """Every weight at −8 or 7 and every activation at ±127 over K = 6144: sums of 6.2 M, exact in int32
    and in float32; a 16-bit or saturating accumulation, or a wrong 8·Σx correction, fails."""
    k, n = 6144, 32
    weight = torch.full((n, k), 7, dtype=torch.int8)
    weight[::2] = -8
    x = torch.full((4, k), 127.0)
    x[1] = -127.0
    x[2, ::3] = -127.0
    x[3, : k // 2] = 0.0
    scale = torch.full((n,), 2.0**-20)
    kernel = make_dynamic_int8_linear(weight, scale, torch.float32, weight_bits=4)
    exact = (x.double() @ weight.double().t()) * 2.0**-20
    assert torch.equal(kernel(x, None), exact.float())


def test_packing_layout():
    """Byte (tile, kb, j, t): low nibble q[16·tile + j, 8·kb + t] + 8, high nibble q[…, 8·kb + 4 + t] + 8."""
    weight = torch.randint(-8, 8, (32, 24), generator=torch.Generator().manual_seed(1), dtype=torch.int8)
    packed = pack_int4_vnni(weight)
    assert packed.shape == (2, 3, 64) and packed.dtype == torch.uint8
    for tile, kb, j, t in [(0, 0, 0, 0), (1, 2, 15, 3), (0, 1, 7, 2), (1, 0, 3, 1)]:
        byte = int(packed[tile, kb, 4 * j + t])
        assert byte & 15 == int(weight[16 * tile + j, 8 * kb + t]) + 8
        assert byte >> 4 == int(weight[16 * tile + j, 8 * kb + 4 + t]) + 8


def test_packing_refuses_bad_weights():
    with pytest.raises(ValueError, match="N % 16"):
        pack_int4_vnni(torch.zeros(24, 16, dtype=torch.int8))
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        pack_int4_vnni(torch.full((16, 16), 8, dtype=torch.int8))


@pytest.mark.parametrize(
    "change,why",
    [
        (dict(weight_bits=8), "int4 weights only"),
        (dict(activation_dtype=torch.float16), "bf16 or float32"),
        (dict(in_features=40), "multiples of 16"),
        (dict(out_features=40), "multiples of 16"),
        (dict(rank_row_max=True), "tensor-parallel"),
    ],
)
def test_layers_it_cannot_run_are_refused(change, why):
    base = dict(
        device_type="cpu", activation_dtype=torch.bfloat16, in_features=64, out_features=32, weight_bits=4
    )
    ok, reason = Int4VnniLinear.can_implement(DynamicInt8LinearConfig(**{**base, **change}))
    assert not ok and why in reason


@pytest.mark.skipif(not VllmCpuInt8ScaledMMWithQuant.is_supported("cpu")[0], reason="no vLLM-CPU int8 op")
def test_int4_activations_are_not_given_to_the_int8_op():
    config = DynamicInt8LinearConfig("cpu", torch.bfloat16, 64, 32, weight_bits=4, activation_bits=4)
    ok, reason = VllmCpuInt8ScaledMMWithQuant.can_implement(config)
    assert not ok and "4-bit activations" in reason


@needs_kernel
def test_traced_with_a_symbolic_row_count():
    """Under torch.compile (dynamic M, as vLLM compiles) the op is opaque and gives the eager bits."""
    weight, scale, bias = int4_layer(64, 256, 3)
    kernel = make_dynamic_int8_linear(weight, scale, torch.bfloat16, weight_bits=4)
    compiled = torch.compile(lambda x: kernel(x, bias), dynamic=True, fullgraph=True)
    for rows in (1, 5, 33):
        x = torch.randn(rows, 256, generator=torch.Generator().manual_seed(rows)).to(torch.bfloat16)
        assert torch.equal(compiled(x), kernel(x, bias))


def _w4a4_layer(dtype: torch.dtype, n: int = 64, k: int = 128) -> torch.nn.Module:
    weight, scale, _ = int4_layer(n, k, 9)
    layer = torch.nn.Module()
    tensors = {"weight": weight, "weight_scale": scale.reshape(n, 1), "weight_offset": torch.zeros(n, 1)}
    for name, tensor in tensors.items():
        setattr(layer, name, torch.nn.Parameter(tensor, requires_grad=False))
    layer.logical_widths = [n]
    layer.modelslim_params_dtype = dtype
    return layer


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_w4a4_dynamic_layer_keeps_int4_weights(dtype, monkeypatch):
    name = "model.layers.0.mlp.down_proj"
    context = LayerContext(name, "W4A4_DYNAMIC", ("down",), QuantDescription("<t>", {}))
    scheme, layer = W4A4DynamicLinearScheme(context), _w4a4_layer(dtype)
    weight, scale = layer.weight.data.clone(), layer.weight_scale.data.reshape(-1).clone()
    scheme.process_weights_after_loading(layer)
    kernel = layer.modelslim_kernel
    assert isinstance(kernel, Int4VnniLinear) and layer.modelslim_act_quant is None
    assert kernel.weight_packed.numel() == weight.numel() // 2  # half a byte per weight
    x = torch.randn(2, 3, 128, generator=torch.Generator().manual_seed(2)).to(dtype)
    y = scheme.apply(layer, x, None)
    assert torch.equal(y.reshape(6, 64), two_kernel_path(x.reshape(6, 128), weight, scale, None, 4))

    monkeypatch.setenv(DISABLED_KERNELS_ENV, Int4VnniLinear.name)
    layer = _w4a4_layer(dtype)
    scheme.process_weights_after_loading(layer)
    assert not isinstance(layer.modelslim_kernel, Int4VnniLinear) and layer.modelslim_act_quant is not None


@needs_isa
def test_a_host_that_cannot_build_falls_back_with_the_reason(tmp_path):
    """No working compiler: int4 kernel skipped with the build error; the next kernel runs the layer."""
    run = run_without_a_compiler(
        tmp_path,
        "from vllm_modelslim.kernels.dynamic_int8_linear import make_dynamic_int8_linear\n"
        "k = make_dynamic_int8_linear(torch.zeros(32, 64, dtype=torch.int8), torch.ones(32),"
        " torch.float32, weight_bits=4, label='W4A8_DYNAMIC')\n"
        "print('chosen:', type(k).__name__)\n",
    )
    assert "chosen: NoneType" in run.stdout  # float32: the two-kernel path (vLLM's op takes bf16 only)
    assert "skipped: cpu_int4_vnni (could not build int4_vnni.cpp" in run.stderr


def test_a_missing_source_is_a_reason_not_an_exception():
    assert load_cpu_extension("no_such_kernel.cpp", ()).endswith("no_such_kernel.cpp is missing")
