"""The vLLM CUDA int8 kernels' argument mapping, on CPU, with vLLM's ops replaced by emulations.

``tests/vllm_int8_emulation.py`` emulates each raw op from vLLM's CUDA sources
(arithmetic and argument checks). Fed exactly what ``vllm_cutlass`` and
``vllm_int8_quant`` hand to the ops, the results must match the project's
float64 references of the schemes: the quantized activations value by value
(one step apart only where fp32 arithmetic reaches a rounding tie), the GEMM
within its rounding bound, the whole layer within a relative error of 4e-3.
The real ops run in ``tests/gpu``.
"""

import logging

import pytest
import torch
from kernel_bounds import (
    assert_quantized,
    assert_within,
    dynamic_quant_value,
    dynamic_scale_expectation,
    gamma,
    scaled_int8_mm_expectation,
    static_quant_value,
)

from static_w8a8_layer import loaded_static_w8a8_layer
from vllm_int8_emulation import EMULATED_OPS
from vllm_modelslim.format.description import QuantDescription
from vllm_modelslim.kernels import (
    quantize_dynamic_per_token_reference,
    quantize_static_per_tensor_reference,
    scaled_int8_mm_reference,
    selection,
)
from vllm_modelslim.kernels.activation_quantizers import (
    ActivationQuantConfig,
    TorchActivationQuant,
    VllmCudaActivationQuant,
    make_activation_quant,
)
from vllm_modelslim.kernels.scaled_int8_mm import (
    ScaledInt8MMConfig,
    TorchIntMMScaledInt8MM,
    VllmCutlassScaledInt8MM,
)
from vllm_modelslim.kernels.selection import DISABLED_KERNELS_ENV
from vllm_modelslim.kernels.vllm_cuda.int8_ops import VllmInt8Ops
from vllm_modelslim.schemes.base import LayerContext
from vllm_modelslim.schemes.linear.w8a8 import W8A8StaticLinearScheme

DTYPES = [torch.bfloat16, torch.float16]
MAX_RELATIVE_ERROR = 4e-3


class RecordingOps:
    """The emulated ops, recording each call's name and arguments."""

    def __init__(self):
        self.calls: list[tuple[str, tuple]] = []
        fields = {}
        for name in (
            "cutlass_scaled_mm",
            "cutlass_scaled_mm_azp",
            "static_scaled_int8_quant",
            "dynamic_scaled_int8_quant",
        ):
            fields[name] = self._recording(name, getattr(EMULATED_OPS, name))
        self.ops = VllmInt8Ops(**fields)

    def _recording(self, name, op):
        def call(*args):
            self.calls.append((name, args))
            return op(*args)

        return call

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).norm() / want.double().norm())


def int8_weight(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(w_float, w_q int8 [N, K], s_w float32 [N])``: a random weight, symmetric per-channel int8."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    s_w = (w.abs().amax(dim=1) / 127).float()
    w_q = torch.round(w / s_w[:, None]).clamp(-128, 127).to(torch.int8)
    return w, w_q, s_w


def activations(m: int, k: int, dtype: torch.dtype, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) + shift
    x[0, :7] = torch.tensor([0.0, 1.5, -2.5, 3.25, 100.0, -100.0, 0.5])  # ties and outliers
    return x.to(dtype)


def static_tensors(w_q, s_w, bias, s_in, o_in):
    """ModelSlim W8A8 static tensors: ``deq_scale = s_in·s_w``, ``quant_bias = round(b/deq) − o·Σ_k w_q``."""
    deq = (torch.tensor(s_in, dtype=torch.float32) * s_w).float()
    quant_bias = torch.round(bias.double() / deq.double()) - o_in * w_q.double().sum(dim=1)
    return deq, quant_bias.to(torch.int32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", [1, 5, 33])
@pytest.mark.parametrize("with_bias", [True, False])
def test_dynamic_w8a8_mapping(dtype, m, with_bias):
    k, n = 256, 64
    _, w_q, s_w = int8_weight(n, k, seed=m)
    x = activations(m, k, dtype, seed=m)
    bias = (torch.randn(n, generator=torch.Generator().manual_seed(1)) * 0.1).to(dtype) if with_bias else None
    recorder = RecordingOps()
    quant = VllmCudaActivationQuant(ActivationQuantConfig(), ops=recorder.ops)
    config = ScaledInt8MMConfig(k, n, "cpu", out_dtype=dtype)
    mm = VllmCutlassScaledInt8MM(config, w_q, s_w, ops=recorder.ops)

    x_q, x_scale = quant(x)
    y = mm(x_q, x_scale, bias, dtype)
    assert recorder.names() == ["dynamic_scaled_int8_quant", "cutlass_scaled_mm"]
    assert y.dtype == dtype and y.shape == (m, n)

    # Scales and quantized values against the exact per-token quantization.
    scale_exact, scale_bound = dynamic_scale_expectation(x, bits=8, clip_ratio=1.0)
    assert_within(x_scale.reshape(-1), scale_exact, scale_bound)
    value, _ = dynamic_quant_value(x, x_scale.reshape(-1))
    assert_quantized(x_q, value, gamma(3) * value.abs())  # fp32 scale, reciprocal and product
    # The GEMM within its rounding bound, for the activations it was given.
    assert_within(y, *scaled_int8_mm_expectation(x_q, x_scale, w_q, s_w, None, bias, out_dtype=dtype))
    # The layer against the float64 reference of W8A8_DYNAMIC.
    x_q_ref, s_ref = quantize_dynamic_per_token_reference(x)
    want = scaled_int8_mm_reference(x_q_ref, s_ref, w_q, s_w, None, bias)
    assert relative_error(y, want) <= MAX_RELATIVE_ERROR


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("offset", [0.0, -3.0, 5.0])
def test_static_w8a8_mapping_with_quant_bias(dtype, offset):
    m, k, n, s_in = 9, 256, 48, 0.03
    w, w_q, s_w = int8_weight(n, k, seed=2)
    bias = torch.randn(n, generator=torch.Generator().manual_seed(3)) * 0.5
    deq, quant_bias = static_tensors(w_q, s_w, bias, s_in, offset)
    x = activations(m, k, dtype, seed=4, shift=-offset * s_in)
    recorder = RecordingOps()
    quant = VllmCudaActivationQuant(
        ActivationQuantConfig(static=True), torch.tensor([s_in]), torch.tensor([offset]), ops=recorder.ops
    )
    mm = VllmCutlassScaledInt8MM(
        ScaledInt8MMConfig(k, n, "cpu", 0, True, dtype), w_q, deq, quant_bias, ops=recorder.ops
    )

    x_q, x_scale = quant(x)
    y = mm(x_q, x_scale, None, dtype)
    assert x_scale is None
    assert recorder.names() == ["static_scaled_int8_quant", "cutlass_scaled_mm_azp"]
    _, (_, _, scale, azp) = recorder.calls[0]
    assert scale.dtype == torch.float32 and azp.dtype == torch.int32 and int(azp) == offset
    _, (_, _, _, scale_a, scale_b, azp_adj, per_token_azp, gemm_bias) = recorder.calls[1]
    assert float(scale_a) == 1.0 and torch.equal(scale_b, deq) and torch.equal(azp_adj, -quant_bias)
    assert per_token_azp is None and gemm_bias is None

    value, slack = static_quant_value(x, s_in, offset)
    assert_quantized(x_q, value, slack)
    assert_within(y, *scaled_int8_mm_expectation(x_q, None, w_q, deq, quant_bias, None, out_dtype=dtype))
    x_q_ref = quantize_static_per_tensor_reference(x, s_in, offset)
    want = scaled_int8_mm_reference(x_q_ref, None, w_q, deq, quant_bias)
    assert relative_error(y, want) <= MAX_RELATIVE_ERROR
    # The folded float bias is there: the float layer agrees to the quantization error
    # (rows without the saturating outliers of row 0).
    float_layer = x[1:].double() @ w.double().T + bias.double()
    assert relative_error(y[1:], float_layer) < 0.05


def test_static_without_int_bias_uses_the_plain_gemm_with_unit_activation_scale():
    """A row-parallel rank > 0 adds no quant_bias: ``cutlass_scaled_mm`` with ``scale_a = 1``."""
    m, k, n = 4, 64, 32
    _, w_q, s_w = int8_weight(n, k, seed=5)
    x_q = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=torch.Generator().manual_seed(6))
    recorder = RecordingOps()
    mm = VllmCutlassScaledInt8MM(
        ScaledInt8MMConfig(k, n, "cpu", out_dtype=torch.bfloat16), w_q, s_w, ops=recorder.ops
    )
    y = mm(x_q, None, None, torch.bfloat16)
    assert recorder.names() == ["cutlass_scaled_mm"] and float(recorder.calls[0][1][3]) == 1.0
    assert_within(y, *scaled_int8_mm_expectation(x_q, None, w_q, s_w, out_dtype=torch.bfloat16))


@pytest.mark.parametrize("bits", [8, 4])
def test_int4_valued_weights_and_activations_run_the_int8_gemm(bits):
    """W4A8/W4A4/FlatQuant: int4 values are exact int8 values; the product is the same integer sum."""
    m, k, n = 6, 128, 32
    g = torch.Generator().manual_seed(7)
    w_q = torch.randint(-8, 8, (n, k), dtype=torch.int8, generator=g)
    s_w = torch.rand(n, generator=g) * 0.01 + 1e-3
    x_q = torch.randint(
        -8 if bits == 4 else -128, 8 if bits == 4 else 128, (m, k), dtype=torch.int8, generator=g
    )
    x_scale = torch.rand(m, generator=g) * 0.1 + 1e-3
    mm = VllmCutlassScaledInt8MM(
        ScaledInt8MMConfig(k, n, "cpu", out_dtype=torch.float16), w_q, s_w, ops=EMULATED_OPS
    )
    y = mm(x_q, x_scale, None, torch.float16)
    assert_within(y, *scaled_int8_mm_expectation(x_q, x_scale, w_q, s_w, out_dtype=torch.float16))


def test_can_implement_says_why_not():
    ok = VllmCutlassScaledInt8MM.can_implement
    assert ok(ScaledInt8MMConfig(64, 32, "cuda", out_dtype=torch.bfloat16)) == (True, None)
    assert "per-group" in ok(ScaledInt8MMConfig(64, 32, "cuda", group_size=32, out_dtype=torch.bfloat16))[1]
    assert "bf16/fp16 only" in ok(ScaledInt8MMConfig(64, 32, "cuda", out_dtype=torch.float32))[1]
    assert "did not give its output dtype" in ok(ScaledInt8MMConfig(64, 32, "cuda"))[1]
    assert "multiples of 16" in ok(ScaledInt8MMConfig(72, 32, "cuda", out_dtype=torch.bfloat16))[1]
    quant = VllmCudaActivationQuant.can_implement
    assert "int4" in quant(ActivationQuantConfig(bits=4))[1]
    assert "clip" in quant(ActivationQuantConfig(clip_ratio=0.9))[1]
    assert "integer" in quant(ActivationQuantConfig(static=True, integer_offset=False))[1]
    for kernel in (VllmCutlassScaledInt8MM, VllmCudaActivationQuant):
        assert kernel.is_supported("cpu")[0] is False
    if not torch.cuda.is_available():
        assert VllmCutlassScaledInt8MM.is_supported("cuda") == (False, "no CUDA device")


def test_an_emulated_op_rejects_what_the_real_op_rejects():
    """The emulation's checks are live: a row-major ``b`` (the weight not transposed) fails."""
    out = torch.empty(2, 16, dtype=torch.bfloat16)
    a = torch.zeros(2, 32, dtype=torch.int8)
    with pytest.raises(RuntimeError, match="column-major"):
        EMULATED_OPS.cutlass_scaled_mm(
            out, a, torch.zeros(32, 16, dtype=torch.int8), torch.ones(1), torch.ones(16), None
        )
    with pytest.raises(RuntimeError, match="bias dtype"):
        EMULATED_OPS.cutlass_scaled_mm(
            out, a, torch.zeros(16, 32, dtype=torch.int8).t(), torch.ones(1), torch.ones(16), torch.zeros(16)
        )


# ------------------------------------------------------------------ the W8A8 scheme on these kernels


def fused_static_layer(dtype, offsets, scales, widths=(32, 16, 16), k=64):
    """A fused q/k/v W8A8 static layer as the plugin leaves it after loading (three shards)."""
    n = sum(widths)
    w, w_q, s_w = int8_weight(n, k, seed=8)
    bias = torch.randn(n, generator=torch.Generator().manual_seed(9)) * 0.2
    deq, quant_bias = [], []
    start = 0
    for width, s_in, o_in in zip(widths, scales, offsets, strict=True):
        d, qb = static_tensors(
            w_q[start : start + width], s_w[start : start + width], bias[start : start + width], s_in, o_in
        )
        deq.append(d)
        quant_bias.append(qb)
        start += width
    quant_bias, deq = torch.cat(quant_bias), torch.cat(deq)
    return loaded_static_w8a8_layer(w_q, quant_bias, deq, scales, offsets, widths, dtype)


def scheme_reference(layer, x):
    """Float64 reference of the fused layer: each shard quantizes x with its own scale and offset."""
    outputs, start = [], 0
    for width, s_in, o_in in zip(
        layer.logical_widths, layer.input_scale.tolist(), layer.input_offset.tolist(), strict=True
    ):
        rows = slice(start, start + width)
        x_q = quantize_static_per_tensor_reference(x, s_in, o_in)
        outputs.append(
            scaled_int8_mm_reference(
                x_q, None, layer.weight.data[rows], layer.deq_scale.data[rows], layer.quant_bias.data[rows]
            )
        )
        start += width
    return torch.cat(outputs, dim=-1)


@pytest.fixture
def vllm_kernels_on_cpu(monkeypatch):
    """Let selection pick the vLLM kernels on CPU, with the emulated ops (no GPU here)."""
    for kernel in (VllmCutlassScaledInt8MM, VllmCudaActivationQuant):
        monkeypatch.setattr(kernel, "is_supported", classmethod(lambda cls, device_type: (True, None)))
        monkeypatch.setattr(kernel, "device_types", None)
    monkeypatch.setattr(VllmInt8Ops, "from_vllm", classmethod(lambda cls: EMULATED_OPS))


def scheme_for(layer):
    context = LayerContext(
        "model.layers.0.self_attn.qkv_proj", "W8A8", ("q", "k", "v"), QuantDescription("<test>", {})
    )
    scheme = W8A8StaticLinearScheme(context)
    scheme.process_weights_after_loading(layer)
    return scheme


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fused_shards_with_their_own_activation_scales(vllm_kernels_on_cpu, monkeypatch, dtype, caplog):
    """q/k/v with different input_scale/offset: one quantizer and one GEMM per group of equal shards."""
    layer = fused_static_layer(dtype, offsets=(-3.0, 4.0, 4.0), scales=(0.03, 0.05, 0.05))
    monkeypatch.setattr(selection, "_LOGGED", set())  # each choice is logged once per process
    with caplog.at_level(logging.INFO, logger="vllm_modelslim.kernels"):
        scheme = scheme_for(layer)
    assert [type(q) for q in layer.modelslim_act_quants] == [VllmCudaActivationQuant] * 2
    assert [type(k) for k in layer.modelslim_kernels] == [VllmCutlassScaledInt8MM] * 2
    assert "Selected kernel vllm_cutlass for W8A8" in caplog.text
    x = activations(7, 64, dtype, seed=10).reshape(7, 1, 64)
    y = scheme.apply(layer, x, None)
    assert y.shape == (7, 1, 64) and y.dtype == dtype
    assert relative_error(y.reshape(7, 64), scheme_reference(layer, x.reshape(7, 64))) <= MAX_RELATIVE_ERROR


def test_disabled_vllm_kernels_fall_back_to_torch(vllm_kernels_on_cpu, monkeypatch):
    monkeypatch.setenv(DISABLED_KERNELS_ENV, "vllm_cutlass,vllm_int8_quant")
    layer = fused_static_layer(torch.bfloat16, offsets=(1.0, 1.0, 1.0), scales=(0.04, 0.04, 0.04))
    scheme_for(layer)
    assert [type(q) for q in layer.modelslim_act_quants] == [TorchActivationQuant]
    assert type(layer.modelslim_kernels[0]) is not VllmCutlassScaledInt8MM
    assert type(layer.modelslim_kernels[0]).name in (
        "cpu_int8_vnni",
        "vllm_onednn_static",
        TorchIntMMScaledInt8MM.name,
    )


def test_torch_static_quantizer_equals_the_function_it_replaces():
    """The static quantizer's device buffers give the values the python-float path gave (CPU unchanged)."""
    from vllm_modelslim.kernels import quantize_static_per_tensor

    x = activations(16, 96, torch.bfloat16, seed=11)
    quant = make_activation_quant("cpu", scale=torch.tensor([0.0371]), offset=torch.tensor([-7.0]))
    assert isinstance(quant, TorchActivationQuant) and quant.scale.device.type == "cpu"
    assert torch.equal(quant(x)[0], quantize_static_per_tensor(x, 0.0371, -7.0))
