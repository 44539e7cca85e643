"""compressed-tensors linears on CPU: vLLM's kernel lists; the adapters against the float64 reference.

The layers are built as vLLM's compressed-tensors schemes build them (vLLM's
parameter classes and names); the weights are packed with compressed-tensors'
own ``pack_to_int32``.
"""

import contextlib

import pytest
import torch
from compressed_tensors.compressors import pack_to_int32
from vllm.model_executor.kernels import linear as vllm_linear_kernels
from vllm.model_executor.kernels.linear import MPLinearLayerConfig
from vllm.model_executor.kernels.linear.scaled_mm.cpu import CPUInt8ScaledMMLinearKernel
from vllm.model_executor.kernels.linear.scaled_mm.ScaledMMLinearKernel import Int8ScaledMMLinearLayerConfig
from vllm.model_executor.parameter import (
    BasevLLMParameter,
    ChannelQuantScaleParameter,
    GroupQuantScaleParameter,
    ModelWeightParameter,
    PackedvLLMParameter,
)
from vllm.platforms import PlatformEnum
from vllm.scalar_type import scalar_types

from vllm_modelslim.kernels.platform import cpu_has_int8_dot
from vllm_modelslim.plugin.compressed_tensors import KERNELS_ENV, kernel_mode, register_cpu_linear_kernels
from vllm_modelslim.plugin.compressed_tensors.int8_linear_kernel import ModelSlimInt8ScaledMMLinearKernel
from vllm_modelslim.plugin.compressed_tensors.kernel_choice import vllm_cpu_int8_path
from vllm_modelslim.plugin.compressed_tensors.wna16_linear_kernel import ModelSlimWNA16LinearKernel
from vllm_modelslim.reference.compressed_tensors_linear import ReferenceCompressedTensorsLinear

INT8_PARAMS = ["weight", "weight_scale", "input_scale", "input_zero_point", "azp_adj"]


@pytest.fixture(autouse=True)
def adapters_enabled(monkeypatch):
    """The adapters under test run whatever vLLM's own kernels could do on this CPU."""
    monkeypatch.setenv(KERNELS_ENV, "always")


@pytest.fixture(autouse=True)
def single_rank(monkeypatch):
    """vLLM's parameter classes read the tensor-parallel rank; here there is one rank and no process group."""
    import vllm.model_executor.parameter as vllm_parameter

    monkeypatch.setattr(vllm_parameter, "get_tensor_model_parallel_rank", lambda: 0)
    monkeypatch.setattr(vllm_parameter, "get_tensor_model_parallel_world_size", lambda: 1)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    """torch's default dtype set as vLLM sets it to the model dtype while building a model."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _loader(*args, **kwargs):
    raise AssertionError("not loaded from a file here")


def test_adapters_come_first_in_vllms_cpu_kernel_lists():
    """Fails loudly when vLLM renames or restructures the kernel lists this project edits."""
    register_cpu_linear_kernels()
    register_cpu_linear_kernels()  # idempotent
    int8 = vllm_linear_kernels._POSSIBLE_INT8_KERNELS[PlatformEnum.CPU]
    mixed = vllm_linear_kernels._POSSIBLE_KERNELS[PlatformEnum.CPU]
    assert int8[0] is ModelSlimInt8ScaledMMLinearKernel and int8.count(ModelSlimInt8ScaledMMLinearKernel) == 1
    assert mixed[0] is ModelSlimWNA16LinearKernel and mixed.count(ModelSlimWNA16LinearKernel) == 1
    assert CPUInt8ScaledMMLinearKernel in int8  # vLLM's own stays as the fallback


def _int8_layer(widths, k, static, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = sum(widths)
    layer = torch.nn.Module()
    layer.logical_widths = widths
    weight = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    layer.register_parameter(
        "weight", ModelWeightParameter(data=weight.clone(), input_dim=1, output_dim=0, weight_loader=_loader)
    )
    scale = torch.rand(n, 1, generator=g) * 0.02 + 0.001
    layer.register_parameter(
        "weight_scale", ChannelQuantScaleParameter(data=scale, output_dim=0, weight_loader=_loader)
    )
    input_scale = torch.tensor([0.05]) if static else None
    # as CompressedTensorsW8A8Int8.create_weights: absent parameters registered as None
    scale_param = BasevLLMParameter(data=input_scale, weight_loader=_loader) if static else None
    layer.register_parameter("input_scale", scale_param)
    layer.register_parameter("input_zero_point", None)
    layer.register_parameter("azp_adj", None)
    tensors = {"weight": weight, "weight_scale": scale.clone()}
    if static:
        tensors["input_scale"] = input_scale.clone()
    return layer, tensors


def test_kernel_mode_decides_per_layer(monkeypatch):
    """``auto`` leaves a layer to vLLM where its CPU kernel is exact; ``never`` always; bad values fail."""
    int8 = Int8ScaledMMLinearLayerConfig(
        is_static_input_scheme=False, is_channelwise=True, input_symmetric=True
    )
    shape = ((256, 128), (256, 128))
    int4 = MPLinearLayerConfig(*shape, scalar_types.uint4b8, torch.bfloat16, 32, zero_points=False)
    int8_weight_only = MPLinearLayerConfig(
        *shape, scalar_types.uint8b128, torch.bfloat16, -1, zero_points=False
    )
    assert ModelSlimInt8ScaledMMLinearKernel.is_supported()[0]
    assert ModelSlimWNA16LinearKernel.can_implement(int4)[0]
    monkeypatch.setenv(KERNELS_ENV, "auto")
    assert ModelSlimInt8ScaledMMLinearKernel.is_supported()[0]
    for dtype in (torch.float32, torch.bfloat16):
        with _default_dtype(dtype):
            vllm_exact, why = vllm_cpu_int8_path(False, True, dtype)
            ours, reason = ModelSlimInt8ScaledMMLinearKernel.can_implement(int8)
        assert ours is not vllm_exact, (dtype, why)
        assert ours or reason == why
    assert ModelSlimWNA16LinearKernel.can_implement(int4)[0]  # measured faster than cpu_gemm_wna16
    assert ModelSlimWNA16LinearKernel.can_implement(int8_weight_only)[0]
    monkeypatch.setenv(KERNELS_ENV, "never")
    assert not ModelSlimInt8ScaledMMLinearKernel.is_supported()[0]
    assert not ModelSlimWNA16LinearKernel.can_implement(int8_weight_only)[0]
    monkeypatch.setenv(KERNELS_ENV, "sometimes")
    with pytest.raises(ValueError, match="VLLM_MODELSLIM_CT_KERNELS"):
        kernel_mode()


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
@pytest.mark.parametrize("m", [1, 5, 40])
def test_int8_adapter_matches_reference(static, m):
    widths, k = [96, 32, 32], 256
    layer, tensors = _int8_layer(widths, k, static)
    config = Int8ScaledMMLinearLayerConfig(
        is_static_input_scheme=static, is_channelwise=True, input_symmetric=True
    )
    kernel = ModelSlimInt8ScaledMMLinearKernel(config, INT8_PARAMS)
    kernel.process_weights_after_loading(layer)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)) * 2
    bias = torch.randn(sum(widths))
    got = kernel.apply_weights(layer, x, bias)
    activations = {"strategy": "tensor" if static else "token", "num_bits": 8}
    want = ReferenceCompressedTensorsLinear(tensors, {"num_bits": 8}, activations, bias)(x.double())
    torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=1e-5)


@pytest.mark.skipif(cpu_has_int8_dot(), reason="this CPU has VNNI/AMX: vLLM's oneDNN int8 GEMM is exact here")
def test_vllm_default_int8_path_is_inexact_without_int8_dot_products():
    """On AVX2 vLLM's oneDNN W8A8 path loses the int32 accumulation that the adapter keeps."""
    widths, k = [256], 1024
    errors = {}
    for kernel_cls in (ModelSlimInt8ScaledMMLinearKernel, CPUInt8ScaledMMLinearKernel):
        layer, tensors = _int8_layer(widths, k, static=False, seed=3)
        config = Int8ScaledMMLinearLayerConfig(
            is_static_input_scheme=False, is_channelwise=True, input_symmetric=True
        )
        kernel = kernel_cls(config, INT8_PARAMS)
        kernel.process_weights_after_loading(layer)
        x = torch.randn(8, k, generator=torch.Generator().manual_seed(1))
        want = ReferenceCompressedTensorsLinear(tensors, {"num_bits": 8}, {"strategy": "token"})(x.double())
        got = kernel.apply_weights(layer, x).double()
        errors[kernel_cls.__name__] = float((got - want).abs().max() / want.abs().max())
    assert errors["ModelSlimInt8ScaledMMLinearKernel"] < 1e-6, errors
    assert errors["CPUInt8ScaledMMLinearKernel"] > 1e-6, errors  # not exact (observed larger on AVX2)


F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16


@pytest.mark.parametrize(
    "isa,static,symmetric,dtype,vllm_keeps",
    [
        # AVX2 only: vLLM's oneDNN int8 GEMM loses the exact int32 accumulation
        ("avx2", False, True, BF16, False),
        ("avx2", True, False, F32, False),
        # VNNI: oneDNN is exact for every case
        ("vnni", False, True, F32, True),
        ("vnni", False, True, BF16, True),
        ("vnni", True, True, F32, True),
        ("vnni", True, False, BF16, True),
        # AMX: symmetric layers may take the SGL path (bf16/fp16 only, per-token quantization)
        ("amx", False, True, F32, False),  # would raise "expect A to be bfloat16 or half"
        ("amx", False, True, BF16, True),
        ("amx", False, True, F16, True),
        ("amx", True, True, BF16, False),  # SGL would ignore the static input scale
        ("amx", True, False, F32, True),  # asymmetric: oneDNN, exact
    ],
)
def test_auto_rules_per_cpu_isa(monkeypatch, isa, static, symmetric, dtype, vllm_keeps):
    """Which vLLM CPU int8 path a layer would take on each ISA, and whether ``auto`` leaves it to vLLM."""
    from vllm_modelslim.plugin.compressed_tensors import kernel_choice

    monkeypatch.setattr(kernel_choice, "cpu_has_int8_dot", lambda: isa != "avx2")
    monkeypatch.setattr(kernel_choice, "cpu_has_amx_tiles", lambda: isa == "amx")
    monkeypatch.setattr(kernel_choice, "vllm_cpu_op", lambda name: True)
    exact, why = vllm_cpu_int8_path(static, symmetric, dtype)
    assert exact is vllm_keeps, why
    monkeypatch.setenv(KERNELS_ENV, "auto")
    config = Int8ScaledMMLinearLayerConfig(
        is_static_input_scheme=static, is_channelwise=True, input_symmetric=symmetric
    )
    with _default_dtype(dtype):
        ours, reason = ModelSlimInt8ScaledMMLinearKernel.can_implement(config)
    if not static and not symmetric:
        assert not ours  # per-token zero points: neither ours nor (exactly) vLLM's
    else:
        assert ours is not vllm_keeps, reason


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_vllm_int8_path_that_auto_keeps_is_exact(static, dtype):
    """Where ``auto`` leaves a layer to vLLM's own int8 kernel, that kernel reproduces the reference.

    On this CPU's path (oneDNN with VNNI; on AMX CPUs the SGL path for bf16
    per-token activations): the int32 sums are exact, so the error is the
    output rounding of ``dtype`` plus at most one activation quantization step
    where vLLM's float32 scale puts ``x / s_x`` across a rounding boundary.
    N = 160 and K = 256 are SGL-eligible shapes on AMX CPUs.
    """
    vllm_exact, why = vllm_cpu_int8_path(static, True, dtype)
    if not vllm_exact:
        pytest.skip(f"auto runs this project's kernel here: {why}")
    widths, k = [96, 32, 32], 256
    layer, tensors = _int8_layer(widths, k, static, seed=5)
    config = Int8ScaledMMLinearLayerConfig(
        is_static_input_scheme=static, is_channelwise=True, input_symmetric=True
    )
    with _default_dtype(dtype):
        kernel = CPUInt8ScaledMMLinearKernel(config, INT8_PARAMS)
        kernel.process_weights_after_loading(layer)
    x = (torch.randn(24, k, generator=torch.Generator().manual_seed(2)) * 2).to(dtype)
    got = kernel.apply_weights(layer, x).double()
    activations = {"strategy": "tensor" if static else "token", "num_bits": 8}
    want = ReferenceCompressedTensorsLinear(tensors, {"num_bits": 8}, activations)(x.double())
    # one activation step moves an output by at most s_x · s_w[n] · 127 (|W| ≤ 127)
    s_x = 0.05 if static else x.double().abs().amax(dim=1, keepdim=True) / 127
    one_step = s_x * tensors["weight_scale"].double().reshape(1, -1) * 127
    rounding = want.abs() * (2**-8 if dtype == torch.bfloat16 else 2**-20)
    assert ((got - want).abs() <= one_step + rounding + 1e-6).all(), why
    # and not a different computation: most outputs agree to the dtype's rounding
    close = (got - want).abs() <= rounding + 1e-6
    assert close.float().mean() > 0.9, why


@pytest.mark.parametrize("bits,group", [(4, 32), (4, -1), (8, -1)])
@pytest.mark.parametrize("m", [1, 40])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_wna16_adapter_matches_reference(bits, group, m, dtype):
    n, k = 128, 256
    g = torch.Generator().manual_seed(bits * 100 + m)
    half = 1 << (bits - 1)
    signed = torch.randint(-half, half, (n, k), generator=g)
    groups = 1 if group == -1 else k // group
    scale = (torch.rand(n, groups, generator=g) * 0.02 + 0.001).to(dtype)
    packed = pack_to_int32(signed.to(torch.int8), bits, packed_dim=1)
    layer = torch.nn.Module()
    layer.register_parameter(
        "weight_packed",
        PackedvLLMParameter(
            data=packed.clone(), input_dim=1, output_dim=0, packed_dim=1, packed_factor=32 // bits,
            weight_loader=_loader,
        ),
    )  # fmt: skip
    scale_param = (
        ChannelQuantScaleParameter(data=scale.clone(), output_dim=0, weight_loader=_loader)
        if group == -1
        else GroupQuantScaleParameter(data=scale.clone(), output_dim=0, input_dim=1, weight_loader=_loader)
    )
    layer.register_parameter("weight_scale", scale_param)
    weight_type = scalar_types.uint4b8 if bits == 4 else scalar_types.uint8b128
    config = MPLinearLayerConfig((k, n), (k, n), weight_type, dtype, group, zero_points=False)
    assert ModelSlimWNA16LinearKernel.can_implement(config)[0]
    kernel = ModelSlimWNA16LinearKernel(config, "weight_packed", "weight_scale", "weight_zero_point")
    kernel.process_weights_after_loading(layer)
    x = torch.randn(m, k, generator=g).to(dtype)
    got = kernel.apply_weights(layer, x)
    tensors = {"weight_packed": packed, "weight_scale": scale, "weight_shape": torch.tensor([n, k])}
    want = ReferenceCompressedTensorsLinear(tensors, {"num_bits": bits}, None)(x.double())
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1.6e-2, atol=2e-2)
    torch.testing.assert_close(got.double(), want, **tol)


TOKEN = dict(num_bits=8, strategy="token", dynamic=True)


def _args(**kw):
    from compressed_tensors.quantization import QuantizationArgs

    return QuantizationArgs(**kw)


@pytest.mark.parametrize(
    "weights,activations,fmt,expected",
    [
        (dict(num_bits=8, strategy="channel"), TOKEN, "int-quantized", "W8A8_DYNAMIC"),
        (dict(num_bits=4, strategy="group", group_size=32), None, "pack-quantized", "W4A16"),
        (dict(num_bits=4, strategy="channel"), None, "pack-quantized", "W4A16"),
        # vLLM keeps these (static activations, 8-bit weight-only, asymmetric, per-tensor weights).
        (dict(num_bits=8, strategy="channel"), dict(num_bits=8, strategy="tensor"), "int-quantized", None),
        (dict(num_bits=8, strategy="channel"), None, "pack-quantized", None),
        (dict(num_bits=4, strategy="group", group_size=32, symmetric=False), None, "pack-quantized", None),
        (dict(num_bits=8, strategy="tensor"), TOKEN, "int-quantized", None),
    ],
)  # fmt: skip
def test_moe_quant_type_follows_the_spec_rules(weights, activations, fmt, expected):
    from vllm_modelslim.plugin.compressed_tensors.moe_quant_type import moe_quant_type

    scheme = {
        "weights": _args(**weights),
        "input_activations": None if activations is None else _args(**activations),
        "format": fmt,
    }
    assert moe_quant_type(scheme) == expected
    assert moe_quant_type(None) is None


def test_compressed_tensors_name_resolves_to_the_cpu_config():
    from vllm.model_executor.layers.quantization import get_quantization_config
    from vllm.model_executor.layers.quantization.compressed_tensors.compressed_tensors import (
        CompressedTensorsConfig,
    )

    from vllm_modelslim.plugin.compressed_tensors import register_compressed_tensors_config
    from vllm_modelslim.plugin.compressed_tensors.config import CompressedTensorsCpuConfig

    register_compressed_tensors_config()
    cls = get_quantization_config("compressed-tensors")
    assert cls is CompressedTensorsCpuConfig and issubclass(cls, CompressedTensorsConfig)
    # the vLLM hook the MoE path calls, as vLLM's own MoE path does
    assert callable(getattr(cls, "_add_fused_moe_to_target_scheme_map", None))
