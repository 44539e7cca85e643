"""vLLM's weight-only CUDA kernels (Machete, Marlin) on a GPU: vs float64 references, emulation, graphs.

Covers W8A16 and W4A16 (per-channel and per-group, with and without zero
points, fp16/bf16), W4A8_DYNAMIC per-group on a weight-only kernel, and the
capturable routed-experts path. Runs only with a CUDA GPU and vLLM's compiled
ops (an installed CUDA build of vLLM, or ``VLLM_MODELSLIM_VLLM_C_LIBRARY``
naming its ``_C`` library); Machete cases also need compute capability 9.0.
Skips with the reason otherwise. Not run yet: no GPU has been lent to these
kernels' author.
"""

import pytest
import torch

from cuda_graph_check import graph_replay_matches_eager
from vllm_modelslim.kernels import quantize_dynamic_per_token, scaled_int8_mm_reference
from vllm_modelslim.kernels.grouped_experts import grouped_experts_forward, swiglu
from vllm_modelslim.kernels.scaled_int8_mm import VllmWna16Int8ActScaledInt8MM, make_scaled_int8_mm
from vllm_modelslim.kernels.vllm_cuda.ops import cuda_capability, vllm_cuda_unavailable_reason
from vllm_modelslim.kernels.vllm_cuda.weight_only_ops import MACHETE_OPS, MARLIN_OPS
from vllm_modelslim.kernels.weight_only import (
    VllmMacheteWeightOnly,
    VllmMarlinWeightOnly,
    WeightOnlyConfig,
    make_weight_only,
    weight_only_reference,
)
from vllm_modelslim.kernels.weight_only.base import zero_point_kind
from vllm_weight_only_emulation import emulate, quantized_layer, relative_error

_MARLIN = "needs a CUDA GPU" if not torch.cuda.is_available() else vllm_cuda_unavailable_reason(*MARLIN_OPS)
_MACHETE = (
    _MARLIN
    or vllm_cuda_unavailable_reason(*MACHETE_OPS)
    or (None if cuda_capability() == 90 else "Machete needs compute capability 9.0")
)
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(_MARLIN is not None, reason=f"vLLM Marlin CUDA ops: {_MARLIN}"),
]
needs_machete = pytest.mark.skipif(_MACHETE is not None, reason=f"Machete: {_MACHETE}")

MAX_RELATIVE_ERROR = 4e-3
HALF = [torch.bfloat16, torch.float16]
# kernel, bits, group (None: per channel), zero points
CASES = [
    pytest.param(VllmMacheteWeightOnly, 8, None, "none", marks=needs_machete),
    pytest.param(VllmMacheteWeightOnly, 8, None, "integer", marks=needs_machete),
    pytest.param(VllmMacheteWeightOnly, 4, 128, "integer", marks=needs_machete),
    pytest.param(VllmMacheteWeightOnly, 4, 64, "float", marks=needs_machete),
    pytest.param(VllmMacheteWeightOnly, 4, None, "none", marks=needs_machete),
    (VllmMarlinWeightOnly, 8, None, "none"),
    (VllmMarlinWeightOnly, 4, 128, "integer"),
    (VllmMarlinWeightOnly, 4, 128, "none"),
    (VllmMarlinWeightOnly, 4, 64, "integer"),
    (VllmMarlinWeightOnly, 4, 32, "integer"),
    (VllmMarlinWeightOnly, 4, None, "integer"),
]
SHAPES = [(1, 4096, 4096), (16, 4096, 1024), (128, 1024, 4096), (1000, 512, 256)]


def build(kernel, bits, group, zero_points, k, n, dtype, seed=0):
    group = group or k
    q, scale, zp = quantized_layer(n, k, group, bits, zero_points, seed=seed)
    layer = make_weight_only(
        q.cuda(), scale.cuda(), None if zp is None else zp.cuda(), dtype, bits=bits, kernel=kernel
    )
    return layer, q, scale, zp


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("kernel,bits,group,zero_points", CASES)
def test_matches_float64_reference(kernel, bits, group, zero_points, dtype, m, k, n):
    layer, q, scale, zp = build(kernel, bits, group, zero_points, k, n, dtype)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(1)).to(dtype)
    bias = torch.randn(n, generator=torch.Generator().manual_seed(2)).to(dtype)
    y = layer(x.cuda(), bias.cuda()).cpu()
    assert y.dtype == dtype and y.shape == (m, n)
    assert relative_error(y, weight_only_reference(x, q, scale, zp, bias)) <= MAX_RELATIVE_ERROR


@pytest.mark.parametrize("kernel,bits,group,zero_points", CASES)
def test_real_op_matches_the_cpu_emulation(kernel, bits, group, zero_points):
    """The emulation the CPU mapping tests rely on agrees with the op (same layout, float32 sums)."""
    m, k, n, dtype = 33, 1024, 512, torch.bfloat16
    layer, q, scale, zp = build(kernel, bits, group, zero_points, k, n, dtype, seed=3)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(4)).to(dtype)
    cfg = WeightOnlyConfig(k, n, group or k, dtype, bits, "cpu", zero_point_kind(zp, bits))
    layout = kernel.gptq_layout(cfg, q, scale, zp)
    assert relative_error(layer(x.cuda(), None).cpu(), emulate(kernel, layout, bits, x)) <= 1e-3


def test_selection_on_this_gpu():
    q, scale, zp = quantized_layer(512, 1024, 128, 4, "integer")
    chosen = type(make_weight_only(q.cuda(), scale.cuda(), zp.cuda(), torch.bfloat16, bits=4))
    assert chosen is (VllmMacheteWeightOnly if _MACHETE is None else VllmMarlinWeightOnly)
    q8, scale8, zp8 = quantized_layer(512, 1024, 1024, 8, "integer")
    chosen8 = type(make_weight_only(q8.cuda(), scale8.cuda(), zp8.cuda(), torch.bfloat16, bits=8))
    assert (chosen8 is VllmMacheteWeightOnly) == (_MACHETE is None)  # Marlin has no int8 zero points


def w4a8_layer(k, n, group, dtype, seed=5):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-8, 8, (n, k), generator=g, dtype=torch.int8)
    scale = (torch.rand(n, 1, generator=g) * 0.02 + 0.002) * (torch.rand(n, k // group, generator=g) + 0.5)
    mm = make_scaled_int8_mm(q.cuda(), scale.cuda(), out_dtype=dtype)
    return mm, q, scale


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("m", [1, 16, 256])
def test_w4a8_per_group_matches_exact_integer_reference(dtype, m):
    k, n = 2048, 1024
    mm, q, scale = w4a8_layer(k, n, 128, dtype)
    assert isinstance(mm, VllmWna16Int8ActScaledInt8MM)
    x = (torch.randn(m, k, generator=torch.Generator().manual_seed(6)) * 3).to(dtype)
    x_q, x_scale = quantize_dynamic_per_token(x)
    y = mm(x_q.cuda(), x_scale.cuda(), None, dtype).cpu()
    assert relative_error(y, scaled_int8_mm_reference(x_q, x_scale, q, scale)) <= MAX_RELATIVE_ERROR


@pytest.mark.parametrize("kernel,bits,group,zero_points", CASES)
def test_forward_is_cuda_graph_capturable(kernel, bits, group, zero_points):
    layer, *_ = build(kernel, bits, group, zero_points, 1024, 512, torch.bfloat16, seed=7)
    bias = torch.randn(512, device="cuda").to(torch.bfloat16)
    x = torch.randn(8, 1024, device="cuda").to(torch.bfloat16)
    graph_replay_matches_eager(lambda t: layer(t, bias), x)


def test_w4a8_per_group_is_cuda_graph_capturable():
    mm, *_ = w4a8_layer(1024, 512, 128, torch.bfloat16)
    x = torch.randn(8, 1024, device="cuda").to(torch.bfloat16)
    graph_replay_matches_eager(lambda t: mm(*quantize_dynamic_per_token(t), None, torch.bfloat16), x)


def test_routed_experts_capture_the_dense_path_and_match_eager():
    """W4A16 experts on Marlin/Machete: the captured (dense) forward equals the grouped eager one."""
    hidden, inter, num_experts, top_k, tokens = 512, 256, 4, 2, 6
    experts = []
    for e in range(num_experts):
        w13, *_ = build(None, 4, 128, "integer", hidden, 2 * inter, torch.bfloat16, seed=10 + e)
        w2, *_ = build(None, 4, 128, "integer", inter, hidden, torch.bfloat16, seed=20 + e)
        experts.append(lambda x, w13=w13, w2=w2: w2(swiglu(w13(x, None), x.dtype), None))
    assert isinstance(w13, (VllmMacheteWeightOnly, VllmMarlinWeightOnly))
    g = torch.Generator().manual_seed(30)
    x = torch.randn(tokens, hidden, generator=g).to(torch.bfloat16).cuda()
    ids = torch.stack([torch.randperm(num_experts, generator=g)[:top_k] for _ in range(tokens)]).cuda()
    weights = torch.rand(tokens, top_k, generator=g).cuda()
    eager = grouped_experts_forward(x, weights, ids, experts)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        grouped_experts_forward(x, weights, ids, experts)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = grouped_experts_forward(x, weights, ids, experts)
    graph.replay()
    torch.cuda.synchronize()
    # same rows, other batch sizes per expert call: equal up to the GEMMs' M-dependent summation order
    assert relative_error(out.cpu(), eager.cpu()) <= 2e-3
