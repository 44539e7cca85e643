"""Static W8A8 on vLLM-CPU's oneDNN handler (``vllm_onednn_static``): exact against ``torch._int_mm``.

The kernel splits the int32 bias into an activation zero point and a float32
remainder (``int_bias_zero_point``); on VNNI/AMX CPUs its results must be the
same bits as ``torch._int_mm``'s exact int32 path, within the float64
reference's rounding bound, for the offsets and folded biases ModelSlim
writes, fused shards with their own offsets, and tensor-parallel ranks.
Real checkpoint tensors: ``tests/checkpoints/test_w8a8_static_kernel_facts.py``.
"""

import gc
import logging
import uuid

import pytest
import torch
from kernel_bounds import assert_within, scaled_int8_mm_expectation

from static_w8a8_layer import loaded_static_w8a8_layer
from vllm_modelslim.format.description import QuantDescription
from vllm_modelslim.kernels import selection
from vllm_modelslim.kernels.scaled_int8_mm import (
    TorchIntMMScaledInt8MM,
    VllmOnednnScaledInt8MM,
    VllmOnednnStaticScaledInt8MM,
    int_bias_zero_point,
    make_scaled_int8_mm,
)
from vllm_modelslim.kernels.scaled_int8_mm.base import FLOAT32_EXACT_INT
from vllm_modelslim.kernels.selection import DISABLED_KERNELS_ENV
from vllm_modelslim.schemes.base import LayerContext
from vllm_modelslim.schemes.linear.w8a8 import W8A8StaticLinearScheme

ONEDNN = VllmOnednnStaticScaledInt8MM.is_supported("cpu")[0]
needs_onednn = pytest.mark.skipif(not ONEDNN, reason="needs vLLM's oneDNN and VNNI/AMX int8 dot products")
OWN_KERNEL = "cpu_int8_vnni"
"""The project's VNNI op, ahead of oneDNN where it builds (``test_kernels_int8_vnni_gemm.py``): off here."""


@pytest.fixture(autouse=True)
def without_the_projects_vnni_op(monkeypatch):
    monkeypatch.setenv(DISABLED_KERNELS_ENV, OWN_KERNEL)


def static_case(m, k, n, offset, remainder, seed=0):
    """int8 x_q [M, K] centred on ``offset``, w_q [N, K], deq_scale [N], quant_bias = r − offset·Σ_k w_q."""
    g = torch.Generator().manual_seed(seed)
    x_q = (torch.randint(-60, 61, (m, k), generator=g) + offset).clamp(-128, 127).to(torch.int8)
    w_q = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g)
    deq_scale = torch.rand(n, generator=g) * 1e-4 + 1e-6
    r = torch.randint(-remainder, remainder + 1, (n,), generator=g)
    quant_bias = (r - offset * w_q.to(torch.int64).sum(dim=1)).to(torch.int32)
    return x_q, w_q, deq_scale, quant_bias


def test_zero_point_recovers_the_offset_folded_into_the_bias():
    _, w_q, _, quant_bias = static_case(1, 300, 40, offset=-17, remainder=0)
    assert int_bias_zero_point(w_q, quant_bias) == -17
    # a folded float bias (m4): still a split with an exact float32 remainder
    _, w_q, _, quant_bias = static_case(1, 300, 40, offset=9, remainder=150_000)
    z = int_bias_zero_point(w_q, quant_bias)
    remainder = quant_bias.long() + z * w_q.long().sum(dim=1)
    assert -128 <= z <= 127 and int(remainder.abs().max()) <= FLOAT32_EXACT_INT
    # no split whose remainder float32 holds exactly: None
    huge = torch.full((40,), 2**30, dtype=torch.int32)
    huge[::2] = -(2**30)
    assert int_bias_zero_point(w_q, huge) is None
    assert int_bias_zero_point(torch.zeros(4, 8, dtype=torch.int8), torch.tensor([5, 0, -3, 1])) == 0
    # K = 1 (torch._int_mm is wrong there; the row sums take another route)
    assert int_bias_zero_point(torch.full((3, 1), 5, dtype=torch.int8), torch.tensor([-10, -10, -10])) == 2


def label():
    return f"W8A8-{uuid.uuid4().hex[:8]}"


def test_static_layers_select_it_and_log_it(caplog):
    """The log names the kernel for a static layer; CPUs without VNNI/AMX keep torch._int_mm."""
    caplog.set_level(logging.INFO, logger="vllm_modelslim.kernels")
    _, w_q, deq_scale, quant_bias = static_case(1, 64, 16, offset=5, remainder=0)
    tag = label()
    kernel = make_scaled_int8_mm(w_q, deq_scale, quant_bias, label=tag)
    lines = [r.getMessage() for r in caplog.records if tag in r.getMessage()]
    expected = VllmOnednnStaticScaledInt8MM if ONEDNN else TorchIntMMScaledInt8MM
    assert isinstance(kernel, expected)
    assert lines[0].startswith(
        f"Selected kernel {expected.name} for {tag} (scaled int8 GEMM, per-channel scales, int32 bias)"
    )
    if not ONEDNN:
        assert "vllm_onednn_static (" in lines[0]
    # without an int32 bias (dynamic layers, row-parallel ranks > 0) the other oneDNN kernel runs
    assert isinstance(
        make_scaled_int8_mm(w_q, deq_scale), VllmOnednnScaledInt8MM if ONEDNN else TorchIntMMScaledInt8MM
    )


@needs_onednn
def test_a_bias_without_an_exact_remainder_falls_back(caplog):
    caplog.set_level(logging.INFO, logger="vllm_modelslim.kernels")
    _, w_q, deq_scale, _ = static_case(1, 64, 16, offset=0, remainder=0)
    huge = torch.full((16,), 2**30, dtype=torch.int32)
    huge[::2] = -(2**30)
    tag = label()
    assert isinstance(make_scaled_int8_mm(w_q, deq_scale, huge, label=tag), TorchIntMMScaledInt8MM)
    (line,) = [r.getMessage() for r in caplog.records if tag in r.getMessage()]
    assert "vllm_onednn_static (the int32 bias leaves no remainder exact in float32" in line


@needs_onednn
@pytest.mark.parametrize(
    "m,k,n,offset,remainder",
    [
        (1, 13, 7, 0, 0),
        (1, 250, 70, -20, 150_000),
        (5, 250, 70, 37, 0),
        (33, 1000, 96, -128, 0),
        (1, 4096, 64, 127, 3),
        (8, 2048, 48, 3, 100_000),
    ],
)
def test_bit_identical_to_int_mm(m, k, n, offset, remainder):
    """Same exact accumulator plus bias, same epilogue: the same bits, within the float64 bound."""
    x_q, w_q, deq_scale, quant_bias = static_case(m, k, n, offset, remainder, seed=m + k)
    onednn = make_scaled_int8_mm(w_q, deq_scale, quant_bias, kernel=VllmOnednnStaticScaledInt8MM)
    int_mm = make_scaled_int8_mm(w_q, deq_scale, quant_bias, kernel=TorchIntMMScaledInt8MM)
    gc.collect()  # the handler must not depend on temporaries freed after construction
    assert onednn.weight is None and onednn.external_weight_bytes == w_q.numel()
    g = torch.Generator().manual_seed(1)
    x_scale, bias = torch.rand(m, generator=g) + 0.5, torch.randn(n, generator=g)
    for out_dtype in (torch.float32, torch.bfloat16, torch.float16):
        got = onednn(x_q, None, None, out_dtype)
        assert torch.equal(got, int_mm(x_q, None, None, out_dtype)), out_dtype
        assert_within(
            got, *scaled_int8_mm_expectation(x_q, None, w_q, deq_scale, quant_bias, None, out_dtype)
        )
    # the shared epilogue also takes per-token scales and a float bias
    assert torch.equal(onednn(x_q, x_scale, bias, torch.float32), int_mm(x_q, x_scale, bias, torch.float32))


@needs_onednn
def test_centring_on_the_zero_point_keeps_large_accumulators_exact():
    """acc ≈ 6e7 (beyond float32's integers), Σ (x_q − z)·w_q ≈ 1.2e7: exact, as torch._int_mm."""
    k, n, z = 4096, 16, 100
    g = torch.Generator().manual_seed(4)
    x_q = torch.randint(120, 128, (3, k), dtype=torch.int8, generator=g)
    w_q = torch.randint(120, 128, (n, k), dtype=torch.int8, generator=g)
    quant_bias = (-z * w_q.to(torch.int64).sum(dim=1)).to(torch.int32)
    kernel = make_scaled_int8_mm(w_q, torch.ones(n), quant_bias)
    assert isinstance(kernel, VllmOnednnStaticScaledInt8MM) and kernel.config.int_bias_zero_point == z
    exact = x_q.to(torch.int64) @ w_q.to(torch.int64).T + quant_bias.to(torch.int64)
    assert int(exact.abs().max()) < FLOAT32_EXACT_INT < int((x_q.long() @ w_q.long().T).abs().max())
    assert torch.equal(kernel(x_q, None, None, torch.float64).to(torch.int64), exact)


def static_layer(weight, quant_bias, deq_scale, scales, offsets, widths, dtype, row_parallel=False, rank=0):
    """A (fused) W8A8 static layer as the plugin leaves it after loading, and its scheme."""
    layer = loaded_static_w8a8_layer(weight, quant_bias, deq_scale, scales, offsets, widths, dtype)
    layer.tp_rank = rank
    shards = ("q", "k", "v")[: len(widths)]
    context = LayerContext(
        "model.layers.0.qkv_proj", "W8A8", shards, QuantDescription("<test>", {}), None, row_parallel
    )
    scheme = W8A8StaticLinearScheme(context)
    scheme.process_weights_after_loading(layer)
    return layer, scheme


def fused_qkv(dtype, folded, offsets=(-3, 4, 4), scales=(0.03, 0.05, 0.05), widths=(32, 16, 16), k=256):
    """q/k/v shards with their own input scale and offset; ``folded``: largest folded float bias ``|r|``."""
    g = torch.Generator().manual_seed(8)
    n = sum(widths)
    weight = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g)
    deq_scale = torch.rand(n, generator=g) * 1e-4 + 1e-5
    folded = torch.randint(-folded, folded + 1, (n,), generator=g)
    per_row_offset = torch.cat([torch.full((w,), o) for w, o in zip(widths, offsets, strict=True)])
    quant_bias = (folded - per_row_offset * weight.to(torch.int64).sum(dim=1)).to(torch.int32)
    return static_layer(weight, quant_bias, deq_scale, scales, offsets, widths, dtype)


@needs_onednn
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("folded", [0, 50_000])
def test_fused_shards_with_their_own_offsets(dtype, folded, monkeypatch):
    """q/k/v with different input offsets: one kernel per group, each with its zero point, same bits."""
    layer, scheme = fused_qkv(dtype, folded)
    assert [type(k) for k in layer.modelslim_kernels] == [VllmOnednnStaticScaledInt8MM] * 2
    if not folded:  # without a folded float bias the split finds each group's input_offset
        assert [k.config.int_bias_zero_point for k in layer.modelslim_kernels] == [-3, 4]
    x = (torch.randn(6, 1, 256, generator=torch.Generator().manual_seed(3)) * 2).to(dtype)
    got = scheme.apply(layer, x, None)
    monkeypatch.setenv(DISABLED_KERNELS_ENV, f"vllm_onednn_static,{OWN_KERNEL}")
    monkeypatch.setattr(selection, "_LOGGED", set())
    torch_layer, torch_scheme = fused_qkv(dtype, folded)
    assert [type(k) for k in torch_layer.modelslim_kernels] == [TorchIntMMScaledInt8MM] * 2
    assert got.shape == (6, 1, 64) and torch.equal(got, torch_scheme.apply(torch_layer, x, None))


@needs_onednn
def test_row_parallel_ranks_sum_to_the_unsplit_layer():
    """rank_quant_bias: rank 0 adds the whole quant_bias (its kernel: vllm_onednn_static), rank 1 none."""
    k, n, offset = 512, 24, -7
    g = torch.Generator().manual_seed(5)
    weight = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g)
    quant_bias = (123 - offset * weight.to(torch.int64).sum(dim=1)).to(torch.int32)
    deq_scale = torch.ones(n)  # unit scales: the float32 outputs are the integer sums themselves
    x = torch.randn(4, k, generator=g) * 2
    half = k // 2
    outputs = []
    for rank, cols in enumerate((slice(0, half), slice(half, k))):
        layer, scheme = static_layer(
            weight[:, cols].contiguous(),
            quant_bias,
            deq_scale,
            (0.05,),
            (offset,),
            (n,),
            torch.float32,
            True,
            rank,
        )
        expected = VllmOnednnStaticScaledInt8MM if rank == 0 else VllmOnednnScaledInt8MM
        assert type(layer.modelslim_kernels[0]) is expected
        outputs.append(scheme.apply(layer, x[:, cols], None))
    whole, whole_scheme = static_layer(weight, quant_bias, deq_scale, (0.05,), (offset,), (n,), torch.float32)
    assert torch.equal(outputs[0] + outputs[1], whole_scheme.apply(whole, x, None))
