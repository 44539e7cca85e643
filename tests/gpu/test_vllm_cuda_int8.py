"""vLLM's CUDA int8 kernels on a GPU: vs the float64 references, vs the CPU emulation, in CUDA graphs.

Runs only with a CUDA GPU and vLLM's compiled ops (an installed CUDA build of
vLLM, or ``VLLM_MODELSLIM_VLLM_C_LIBRARY`` naming its ``_C`` library); skips
with the reason otherwise. ``pytest -m gpu tests/gpu`` selects these.
"""

import pytest
import torch

from cuda_graph_check import graph_replay_matches_eager
from vllm_int8_emulation import EMULATED_OPS
from vllm_modelslim.kernels import (
    quantize_dynamic_per_token_reference,
    quantize_static_per_tensor_reference,
    scaled_int8_mm_reference,
)
from vllm_modelslim.kernels.activation_quantizers import (
    TorchActivationQuant,
    VllmCudaActivationQuant,
    make_activation_quant,
)
from vllm_modelslim.kernels.scaled_int8_mm import (
    TorchIntMMScaledInt8MM,
    VllmCutlassScaledInt8MM,
    make_scaled_int8_mm,
)
from vllm_modelslim.kernels.selection import DISABLED_KERNELS_ENV
from vllm_modelslim.kernels.vllm_cuda.int8_ops import int8_ops_unavailable_reason

_REASON = "needs a CUDA GPU" if not torch.cuda.is_available() else int8_ops_unavailable_reason()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(_REASON is not None, reason=f"vLLM int8 CUDA ops: {_REASON}"),
]

MAX_RELATIVE_ERROR = 4e-3
SHAPES = [(1, 4096, 4096), (16, 4096, 14336), (128, 14336, 4096), (1024, 512, 256)]


def relative_error(got, want):
    return float((got.double() - want.double()).norm() / want.double().norm())


def case(m, k, n, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.02
    s_w = (w.abs().amax(1) / 127).float()
    w_q = torch.round(w / s_w[:, None]).clamp(-128, 127).to(torch.int8)
    x = torch.randn(m, k, generator=g).to(dtype)
    return x, w_q, s_w


def static_tensors(w_q, s_w, s_in, o_in, seed=1):
    bias = torch.randn(w_q.shape[0], generator=torch.Generator().manual_seed(seed)) * 0.1
    deq = (torch.tensor(s_in) * s_w).float()
    quant_bias = (torch.round(bias.double() / deq.double()) - o_in * w_q.double().sum(1)).to(torch.int32)
    return deq, quant_bias


def dynamic_layer(w_q, s_w, dtype):
    quant = make_activation_quant("cuda", bits=8)
    mm = make_scaled_int8_mm(w_q.cuda(), s_w.cuda(), out_dtype=dtype)
    return quant, mm


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_dynamic_matches_float64_reference(dtype, m, k, n):
    x, w_q, s_w = case(m, k, n, dtype)
    quant, mm = dynamic_layer(w_q, s_w, dtype)
    assert isinstance(quant, VllmCudaActivationQuant) and isinstance(mm, VllmCutlassScaledInt8MM)
    y = mm(*quant(x.cuda()), None, dtype).cpu()
    x_q, s = quantize_dynamic_per_token_reference(x)
    assert relative_error(y, scaled_int8_mm_reference(x_q, s, w_q, s_w)) <= MAX_RELATIVE_ERROR


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("offset", [0.0, 3.0])
def test_static_matches_float64_reference(dtype, m, k, n, offset):
    s_in = 0.02
    x, w_q, s_w = case(m, k, n, dtype)
    deq, quant_bias = static_tensors(w_q, s_w, s_in, offset)
    quant = make_activation_quant("cuda", scale=torch.tensor([s_in]), offset=torch.tensor([offset]))
    mm = make_scaled_int8_mm(w_q.cuda(), deq.cuda(), quant_bias.cuda(), out_dtype=dtype)
    assert isinstance(quant, VllmCudaActivationQuant) and isinstance(mm, VllmCutlassScaledInt8MM)
    y = mm(quant(x.cuda())[0], None, None, dtype).cpu()
    x_q = quantize_static_per_tensor_reference(x, s_in, offset)
    want = scaled_int8_mm_reference(x_q, None, w_q, deq, quant_bias)
    assert relative_error(y, want) <= MAX_RELATIVE_ERROR


@pytest.mark.parametrize("static", [False, True])
def test_real_ops_match_the_cpu_emulation(static):
    """The emulation the CPU mapping tests rely on agrees with vLLM's ops (a few tie flips allowed)."""
    m, k, n, dtype = 64, 1024, 512, torch.bfloat16
    x, w_q, s_w = case(m, k, n, dtype, seed=3)
    if static:
        deq, quant_bias = static_tensors(w_q, s_w, 0.02, 3.0)
        args = dict(scale=torch.tensor([0.02]), offset=torch.tensor([3.0]))
        real = (
            make_activation_quant("cuda", **args),
            make_scaled_int8_mm(w_q.cuda(), deq.cuda(), quant_bias.cuda(), out_dtype=dtype),
        )
        cfg_q, cfg_mm = real[0].config, real[1].config
        emu = (
            VllmCudaActivationQuant(cfg_q, args["scale"], args["offset"], ops=EMULATED_OPS),
            VllmCutlassScaledInt8MM(cfg_mm, w_q, deq, quant_bias, ops=EMULATED_OPS),
        )
    else:
        real = dynamic_layer(w_q, s_w, dtype)
        emu = (
            VllmCudaActivationQuant(real[0].config, ops=EMULATED_OPS),
            VllmCutlassScaledInt8MM(real[1].config, w_q, s_w, ops=EMULATED_OPS),
        )
    q_real, s_real = real[0](x.cuda())
    q_emu, s_emu = emu[0](x)
    flips = (q_real.cpu().to(torch.int16) - q_emu.to(torch.int16)).abs()
    assert int(flips.max()) <= 1 and int((flips > 0).sum()) <= q_emu.numel() // 10000
    if not static:
        assert torch.equal(s_real.cpu(), s_emu)
    y_real = real[1](q_real, s_real, None, dtype).cpu()
    y_emu = emu[1](q_real.cpu(), None if s_real is None else s_real.cpu(), None, dtype)
    assert relative_error(y_real, y_emu) <= 1e-3


@pytest.mark.parametrize("disable", [False, True], ids=["vllm", "torch_fallback"])
@pytest.mark.parametrize("static", [False, True])
def test_forward_is_cuda_graph_capturable(monkeypatch, disable, static):
    if disable:
        monkeypatch.setenv(DISABLED_KERNELS_ENV, "vllm_cutlass,vllm_int8_quant")
    m, k, n, dtype = 32, 512, 256, torch.bfloat16
    x, w_q, s_w = case(m, k, n, dtype, seed=4)
    if static:
        deq, quant_bias = static_tensors(w_q, s_w, 0.02, -5.0)
        quant = make_activation_quant("cuda", scale=torch.tensor([0.02]), offset=torch.tensor([-5.0]))
        mm = make_scaled_int8_mm(w_q.cuda(), deq.cuda(), quant_bias.cuda(), out_dtype=dtype)
    else:
        quant, mm = dynamic_layer(w_q, s_w, dtype)
    expected = (
        (TorchActivationQuant, TorchIntMMScaledInt8MM)
        if disable
        else (VllmCudaActivationQuant, VllmCutlassScaledInt8MM)
    )
    assert (type(quant), type(mm)) == expected
    graph_replay_matches_eager(lambda t: mm(*quant(t), None, dtype), x.cuda())
