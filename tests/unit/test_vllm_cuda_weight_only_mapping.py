"""The Machete / Marlin weight-only kernels' layouts, checked on CPU (no GPU needed).

What the kernels hand vLLM's CUDA ops is built in pure torch
(``gptq_layout``); these tests (1) compare each layout step with vLLM's own
Python helpers (vLLM 0.32 is installed here), (2) unpack the layout again and
compare the weight it encodes element-wise with the project's float64
dequantization, and (3) emulate each kernel's math in plain torch from exactly
those arguments and compare with the float64 reference GEMM. The CUDA ops
themselves are tested by ``test_vllm_cuda_weight_only_gpu.py`` (needs a GPU).
"""

from __future__ import annotations

import pytest
import torch
from kernel_bounds import assert_within, routed_experts_expectation

from vllm_modelslim.kernels import (
    make_weight_only_int4,
    make_weight_only_int8,
    quantize_dynamic_per_token,
    scaled_int8_mm_reference,
)
from vllm_modelslim.kernels.grouped_experts import grouped_experts_dense, grouped_experts_forward
from vllm_modelslim.kernels.int4_packing import (
    pack_int4_pairs,
    pack_int4_to_int32,
    unpack_int4_from_int32,
    unpack_int4_pairs,
)
from vllm_modelslim.kernels.scaled_int8_mm import ScaledInt8MMConfig
from vllm_modelslim.kernels.scaled_int8_mm.vllm_wna16_int8_act import (
    INNER_DTYPE,
    VllmWna16Int8ActScaledInt8MM,
    inner_config,
)
from vllm_modelslim.kernels.vllm_cuda import gptq_layout, weight_only_ops
from vllm_modelslim.kernels.weight_only import (
    DequantMatmulWeightOnly,
    VllmMacheteWeightOnly,
    VllmMarlinWeightOnly,
    WeightOnlyConfig,
    dequantize_weight,
    weight_only_reference,
)
from vllm_modelslim.kernels.weight_only.base import zero_point_kind
from vllm_modelslim.kernels.weight_only.vllm_gptq import GptqLayout
from vllm_weight_only_emulation import emulate, layout_weight, quantized_layer, relative_error

F64 = torch.float64
HALF = (torch.bfloat16, torch.float16)
REL_TOL = 4e-3  # the bound for the GPU kernels vs the float64 reference


def config(n, k, group, dtype, bits, zp):
    return WeightOnlyConfig(
        k, n, group, dtype, bits=bits, device_type="cuda", zero_points=zero_point_kind(zp, bits)
    )


# ---------------------------------------------------------------- vLLM's own helpers agree with ours


def test_scalar_type_ids_are_vllms():
    scalar_type = pytest.importorskip("vllm.scalar_type")
    types = scalar_type.scalar_types
    assert weight_only_ops.weight_type_id(4, zero_points=False) == types.uint4b8.id
    assert weight_only_ops.weight_type_id(8, zero_points=False) == types.uint8b128.id
    assert weight_only_ops.weight_type_id(4, zero_points=True) == types.uint4.id
    assert weight_only_ops.weight_type_id(8, zero_points=True) == types.uint8.id


@pytest.mark.parametrize("bits", [4, 8])
def test_gptq_packing_is_vllms(bits):
    quant_utils = pytest.importorskip("vllm.model_executor.layers.quantization.utils.quant_utils")
    types = pytest.importorskip("vllm.scalar_type").scalar_types
    q, _, _ = quantized_layer(64, 256, 256, bits, "none")
    unsigned = (q.to(torch.int32) + gptq_layout.unsigned_bias(bits)).T.contiguous()  # [K, N]
    wtype = types.uint4b8 if bits == 4 else types.uint8b128
    want = quant_utils.pack_quantized_values_into_int32(unsigned, wtype, packed_dim=0)
    got = gptq_layout.gptq_pack_weight(q, bits)
    assert got.dtype == torch.int32 and got.shape == (256 * bits // 32, 64)
    assert torch.equal(got, want)
    assert torch.equal(gptq_layout.gptq_unpack_weight(got, bits), q)


@pytest.mark.parametrize("group", [32, 128, 256])
def test_marlin_scales_and_zero_points_are_vllms(group):
    marlin_utils = pytest.importorskip("vllm.model_executor.layers.quantization.utils.marlin_utils")
    n, k = 128, 256
    g = torch.Generator().manual_seed(3)
    scales = torch.rand(k // group, n, generator=g)
    per_group = group < k
    want = marlin_utils.marlin_permute_scales(scales, k, n, group if per_group else -1)
    got = gptq_layout.marlin_permute_scales(scales, per_group)
    assert torch.equal(got, want)
    assert torch.equal(gptq_layout.marlin_unpermute_scales(got, per_group), scales)
    zp = torch.randint(0, 16, (k // group, n), generator=g)
    want_zp = marlin_utils.marlin_zero_points(zp, k // group, n, 4)
    got_zp = gptq_layout.marlin_pack_zero_points(zp)
    assert torch.equal(got_zp, want_zp)
    assert torch.equal(gptq_layout.marlin_unpack_zero_points(got_zp), zp)


def test_marlin_zero_points_must_be_unsigned_int4():
    with pytest.raises(ValueError, match=r"integers in \[0, 15\]"):
        gptq_layout.marlin_pack_zero_points(torch.full((1, 64), 16.0))
    with pytest.raises(ValueError, match=r"integers in \[0, 15\]"):
        gptq_layout.marlin_pack_zero_points(torch.full((1, 64), 2.5))


# ---------------------------------------------------------------- layouts encode ModelSlim's (q − z)·s

CASES = [
    # kernel, bits, group (None: per channel), zero points
    (VllmMacheteWeightOnly, 8, None, "none"),
    (VllmMacheteWeightOnly, 8, None, "integer"),
    (VllmMacheteWeightOnly, 4, 128, "integer"),
    (VllmMacheteWeightOnly, 4, 64, "float"),
    (VllmMacheteWeightOnly, 4, None, "none"),
    (VllmMarlinWeightOnly, 8, None, "none"),
    (VllmMarlinWeightOnly, 4, 128, "integer"),
    (VllmMarlinWeightOnly, 4, 64, "none"),
    (VllmMarlinWeightOnly, 4, 32, "integer"),
    (VllmMarlinWeightOnly, 4, None, "integer"),
]


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize(("kernel", "bits", "group", "zero_points"), CASES)
def test_layout_encodes_the_reference_weight(kernel, bits, group, zero_points, dtype):
    n, k = 256, 512
    group = group or k
    q, scale, zp = quantized_layer(n, k, group, bits, zero_points)
    cfg = config(n, k, group, dtype, bits, zp)
    assert kernel.can_implement(cfg) == (True, None)
    layout = kernel.gptq_layout(cfg, q, scale, zp)
    assert layout.words.dtype == torch.int32 and layout.scales.dtype == dtype
    assert layout.group_size == (-1 if group == k else group)
    got = layout_weight(kernel, layout, bits, n, k)
    want = dequantize_weight(q, scale, zp)
    if kernel is VllmMacheteWeightOnly and zp is not None:
        # Machete's zero point z' = −(z + 2^(bits−1))·s is rounded once to the activation dtype
        shift = (zp.to(F64) + gptq_layout.unsigned_bias(bits)) * scale.to(F64)
        bound = torch.finfo(dtype).eps / 2 * shift.abs().repeat_interleave(group, dim=1)
        assert bool(((got - want).abs() <= bound).all())
    else:
        assert torch.equal(got, want)  # exact: scales are representable, zero points integers


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize(("kernel", "bits", "group", "zero_points"), CASES)
def test_emulated_kernel_matches_float64_reference(kernel, bits, group, zero_points, dtype):
    n, k, m = 256, 512, 7
    group = group or k
    q, scale, zp = quantized_layer(n, k, group, bits, zero_points, seed=5)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(6)).to(dtype)
    layout = kernel.gptq_layout(config(n, k, group, dtype, bits, zp), q, scale, zp)
    want = weight_only_reference(x, q, scale, zp, out_dtype=F64)
    got = emulate(kernel, layout, bits, x)
    assert relative_error(got, want) <= REL_TOL
    # the test can fail: zero point dropped, its sign flipped (vllm-ascend's error), scales misordered
    if zp is not None:
        dropped = kernel.gptq_layout(config(n, k, group, dtype, bits, None), q, scale, None)
        assert relative_error(emulate(kernel, dropped, bits, x), want) > 10 * REL_TOL
    if zp is not None and kernel is VllmMacheteWeightOnly:
        flipped = kernel.gptq_layout(config(n, k, group, dtype, bits, -zp), q, scale, -zp)
        assert relative_error(emulate(kernel, flipped, bits, x), want) > 10 * REL_TOL
    shuffled = kernel.gptq_layout(config(n, k, group, dtype, bits, zp), q, scale.flip(0), zp)
    assert relative_error(emulate(kernel, shuffled, bits, x), want) > 10 * REL_TOL


@pytest.mark.parametrize("layout_name", ["modelslim_int4_pairs", "pack_quantized_int32"])
def test_both_on_disk_int4_layouts_reach_the_same_kernel_inputs(layout_name):
    """ModelSlim's two-per-int8 (along N) and LLM-Compressor's eight-per-int32 (along K): one layout."""
    n, k, group = 128, 256, 128
    q, scale, zp = quantized_layer(n, k, group, 4, "integer", seed=9)
    if layout_name == "modelslim_int4_pairs":
        canonical = unpack_int4_pairs(pack_int4_pairs(q, dim=0), dim=0)
    else:
        canonical = unpack_int4_from_int32(pack_int4_to_int32(q, dim=1), dim=1, size=k)
    cfg = config(n, k, group, torch.bfloat16, 4, zp)
    for kernel in (VllmMacheteWeightOnly, VllmMarlinWeightOnly):
        got = kernel.gptq_layout(cfg, canonical, scale, zp)
        want = kernel.gptq_layout(cfg, q, scale, zp)
        assert torch.equal(got.words, want.words)
        assert torch.equal(got.words, gptq_layout.gptq_pack_weight(q, 4))


# ---------------------------------------------------------------- what each kernel accepts


def test_zero_point_kinds():
    assert zero_point_kind(None, 4) == "none"
    assert zero_point_kind(torch.tensor([-8.0, 7.0]), 4) == "integer"
    assert zero_point_kind(torch.tensor([8.0]), 4) == "float"  # z + 8 = 16 does not fit uint4
    assert zero_point_kind(torch.tensor([0.5]), 8) == "float"
    assert zero_point_kind(torch.tensor([-128.0, 127.0]), 8) == "integer"


@pytest.mark.parametrize(
    ("kernel", "cfg", "reason"),
    [
        (VllmMacheteWeightOnly, WeightOnlyConfig(512, 256, 512, torch.float32, bits=4), "fp16/bf16"),
        (VllmMacheteWeightOnly, WeightOnlyConfig(512, 256, 32, torch.bfloat16, bits=4), "group size 32"),
        (VllmMacheteWeightOnly, WeightOnlyConfig(512, 192, 128, torch.bfloat16, bits=4), "N % 128"),
        (
            VllmMarlinWeightOnly,
            WeightOnlyConfig(512, 256, 512, torch.bfloat16, 8, "cuda", "integer"),
            "4-bit",
        ),
        (
            VllmMarlinWeightOnly,
            WeightOnlyConfig(512, 256, 128, torch.bfloat16, 4, "cuda", "float"),
            "integers",
        ),
        (VllmMarlinWeightOnly, WeightOnlyConfig(192, 256, 64, torch.bfloat16, bits=4), "K % 128"),
        (VllmMarlinWeightOnly, WeightOnlyConfig(512, 256, 256, torch.bfloat16, bits=4), "group size 256"),
    ],
)
def test_can_implement_refusals(kernel, cfg, reason):
    ok, why = kernel.can_implement(cfg)
    assert not ok and reason in why


def test_cpu_selection_passes_over_the_cuda_kernels(caplog, monkeypatch):
    q, scale, _ = quantized_layer(64, 256, 256, 8, "none")
    caplog.set_level("INFO", logger="vllm_modelslim.kernels")
    monkeypatch.setenv("VLLM_MODELSLIM_DISABLED_KERNELS", "cpu_int8_avx512")  # would take float32 here
    kernel = make_weight_only_int8(q, scale, None, torch.float32, label="mapping-test-int8")
    assert isinstance(kernel, DequantMatmulWeightOnly)
    assert VllmMacheteWeightOnly.is_supported("cpu") == (False, "Machete is a CUDA kernel")
    assert VllmMarlinWeightOnly.is_supported("cpu") == (False, "Marlin is a CUDA kernel")
    assert "Selected kernel dequant_matmul for mapping-test-int8" in caplog.text
    assert "vllm_machete" not in caplog.text and "vllm_marlin" not in caplog.text  # other device: not listed
    q4, scale4, zp4 = quantized_layer(64, 256, 128, 4, "integer")
    assert not isinstance(make_weight_only_int4(q4, scale4, zp4, torch.bfloat16), VllmMarlinWeightOnly)


# ---------------------------------------------------------------- one call for vLLM 0.26 and 0.32 schemas

SCHEMAS = {
    "v026": (
        "marlin_gemm(Tensor a, Tensor? c_or_none, Tensor b_q_weight, Tensor? b_bias_or_none, "
        "Tensor b_scales, Tensor? a_scales, Tensor? global_scale, Tensor? b_zeros_or_none, "
        "Tensor? g_idx_or_none, Tensor? perm_or_none, Tensor workspace, int b_type_id, SymInt size_m, "
        "SymInt size_n, SymInt size_k, "
        "bool is_k_full, bool use_atomic_add, bool use_fp32_reduce, bool is_zp_float) -> Tensor",
        "gptq_marlin_repack(Tensor b_q_weight, Tensor perm, SymInt size_k, SymInt size_n, int num_bits, "
        "bool is_a_8bit) -> Tensor",
    ),
    "v032": (
        "marlin_gemm(Tensor a, Tensor? c_or_none, Tensor b_q_weight, Tensor? b_bias_or_none, "
        "Tensor b_scales, Tensor? a_scales, Tensor? global_scale, Tensor? b_zeros_or_none, Tensor workspace, "
        "int b_type_id, "
        "SymInt size_m, SymInt size_n, SymInt size_k, bool use_atomic_add, bool use_fp32_reduce, "
        "bool is_zp_float) -> Tensor",
        "gptq_marlin_repack(Tensor b_q_weight, SymInt size_k, SymInt size_n, int num_bits, "
        "bool is_a_8bit) -> Tensor",
    ),
}
_LIBRARIES = {}


@pytest.mark.parametrize("version", sorted(SCHEMAS))
def test_marlin_calls_fit_both_vllm_schemas(version, monkeypatch):
    """The wrappers fill 0.26's act-order arguments (empty g_idx/perm, is_k_full) and skip them for 0.32."""
    namespace = f"modelslim_test_marlin_{version}"
    calls = {}
    if version not in _LIBRARIES:
        library = torch.library.Library(namespace, "DEF")
        for schema in SCHEMAS[version]:
            library.define(schema)
        op_name = {s.split("(")[0] for s in SCHEMAS[version]}

        def recorder(name):
            def run(*args):
                calls.setdefault(version, {})[name] = args
                return args[0].new_zeros(1)

            return run

        for name in op_name:
            library.impl(name, recorder(name), "CompositeExplicitAutograd")
        _LIBRARIES[version] = (library, calls)
    calls = _LIBRARIES[version][1]
    namespace_ops = getattr(torch.ops, namespace)
    monkeypatch.setattr(weight_only_ops, "vllm_cuda_op", lambda name: getattr(namespace_ops, name))
    weight_only_ops._argument_names.cache_clear()
    try:
        x, words = torch.zeros(3, 128), torch.zeros(16, 64, dtype=torch.int32)
        scales, zeros, workspace = torch.ones(1, 64), torch.empty(0, dtype=torch.int32), torch.zeros(8)
        weight_only_ops.gptq_marlin_repack(words, 128, 64, 4)
        weight_only_ops.marlin_gemm(x, words, scales, zeros, workspace, 1234, 64, 128)
        assert weight_only_ops.schema_mismatch_reason("marlin_gemm", "gptq_marlin_repack") is None
    finally:
        weight_only_ops._argument_names.cache_clear()
    repack, gemm = calls[version]["gptq_marlin_repack"], calls[version]["marlin_gemm"]
    if version == "v026":
        assert repack[1].numel() == 0 and repack[2:] == (128, 64, 4, False)
        assert gemm[8].numel() == 0 and gemm[9].numel() == 0 and gemm[10] is workspace
        assert gemm[11:] == (1234, 3, 64, 128, True, False, True, False)
    else:
        assert repack[1:] == (128, 64, 4, False)
        assert gemm[8] is workspace and gemm[9:] == (1234, 3, 64, 128, False, True, False)
    assert gemm[0] is x and gemm[2] is words and gemm[4] is scales and gemm[7] is zeros


def test_an_unknown_schema_is_refused_at_selection(monkeypatch):
    """A vLLM whose ops take other arguments is refused by ``is_supported``, not at the first forward."""
    library = torch.library.Library("modelslim_test_marlin_future", "DEF")
    library.define("marlin_gemm(Tensor a, Tensor b_q_weight, bool new_flag) -> Tensor")
    library.define("machete_mm(Tensor A, Tensor B, int b_type) -> Tensor")
    namespace_ops = torch.ops.modelslim_test_marlin_future
    monkeypatch.setattr(weight_only_ops, "vllm_cuda_op", lambda name: getattr(namespace_ops, name))
    weight_only_ops._argument_names.cache_clear()
    try:
        assert "unknown arguments ['new_flag']" in weight_only_ops.schema_mismatch_reason("marlin_gemm")
        assert "expected" in weight_only_ops.schema_mismatch_reason("machete_mm")
    finally:
        weight_only_ops._argument_names.cache_clear()


# ---------------------------------------------------------------- W4A8_DYNAMIC per group, weight-only kernel


@pytest.mark.parametrize("out_dtype", HALF)
@pytest.mark.parametrize(("kernel", "group"), [(VllmMacheteWeightOnly, 128), (VllmMarlinWeightOnly, 64)])
def test_w4a8_per_group_mapping_matches_reference(kernel, group, out_dtype):
    """What :class:`VllmWna16Int8ActScaledInt8MM` gives its inner kernel, emulated, vs exact integer sums."""
    n, k, m = 256, 512, 5
    g = torch.Generator().manual_seed(11)
    q = torch.randint(-8, 8, (n, k), generator=g, dtype=torch.int8)
    scale = (torch.rand(n, 1, generator=g) * 0.02 + 0.002) * (torch.rand(n, k // group, generator=g) + 0.5)
    x = (torch.randn(m, k, generator=g) * 3).to(out_dtype)
    x_q, x_scale = quantize_dynamic_per_token(x)
    cfg = ScaledInt8MMConfig(k, n, "cuda", group_size=group)
    assert not VllmWna16Int8ActScaledInt8MM.can_implement(cfg)[0]  # no CUDA here: no inner kernel qualifies
    layout = kernel.gptq_layout(inner_config(cfg, bits=4), q, scale, None)
    assert layout.scales.dtype == INNER_DTYPE and layout.zeros is None or not layout.zeros.numel()
    y_inner = emulate(kernel, layout, 4, x_q.to(INNER_DTYPE))  # the integers are exact in bf16
    got = (y_inner.float() * x_scale.float().reshape(-1, 1)).to(out_dtype)
    want = scaled_int8_mm_reference(x_q, x_scale, q, scale, out_dtype=F64)
    assert relative_error(got, want) <= REL_TOL
    wrong = kernel.gptq_layout(inner_config(cfg, bits=4), q, scale.flip(1), None)
    y_wrong = emulate(kernel, wrong, 4, x_q.to(INNER_DTYPE)).float() * x_scale.float().reshape(-1, 1)
    assert relative_error(y_wrong, want) > 10 * REL_TOL


def test_w4a8_cuda_kernel_takes_per_group_only():
    per_channel = ScaledInt8MMConfig(512, 256, "cuda")
    assert VllmWna16Int8ActScaledInt8MM.can_implement(per_channel) == (
        False,
        "per-channel scales go to the int8 GEMMs",
    )
    ok, why = VllmWna16Int8ActScaledInt8MM.is_supported("cpu")
    assert not ok and "CUDA" in why


# ---------------------------------------------------------------- MoE experts: the capturable dense path


def test_dense_experts_path_matches_the_grouped_reference():
    """What CUDA-graph capture runs: every expert on every row, unrouted rows masked (even if non-finite)."""
    hidden, num_experts, tokens = 32, 5, 9
    g = torch.Generator().manual_seed(4)
    mats = [torch.randn(hidden, hidden, generator=g) / hidden**0.5 for _ in range(num_experts)]

    def make(e):
        def forward(rows):  # row-wise; inf on the poisoned row, which no expert is routed
            y = rows.float() @ mats[e]
            return torch.where(rows.float().abs().amax(-1, keepdim=True) > 1e3, torch.inf, y).to(rows.dtype)

        return forward

    experts = [make(e) for e in range(num_experts)]
    x = torch.randn(tokens, hidden, generator=g).to(torch.bfloat16)
    ids = torch.stack([torch.randperm(num_experts, generator=g)[:2] for _ in range(tokens)])
    weights = torch.rand(tokens, 2, generator=g)
    ids[ids == 3] = 2  # expert 3 gets no row
    ids[0] = torch.tensor([0, 1])
    x[5] = 2e3
    ids[5] = torch.tensor([5, 5])  # global expert 5 lives on another rank
    expert_map = torch.tensor([0, 1, 2, 3, 4, -1])
    got = grouped_experts_dense(x, weights, ids, experts, expert_map)
    assert torch.isfinite(got).all()
    exact, bound = routed_experts_expectation(x, weights, ids, experts, expert_map)
    assert_within(got, exact, bound)
    on_input = grouped_experts_dense(x, weights, ids, experts, expert_map, apply_router_weight_on_input=True)
    want = grouped_experts_forward(x, weights, ids, experts, expert_map, apply_router_weight_on_input=True)
    assert torch.isfinite(on_input).all()
    torch.testing.assert_close(on_input, want, rtol=1e-2, atol=1e-2)
    assert not torch.allclose(on_input.float(), got.float(), atol=1e-3)  # the option changes the result


# ---------------------------------------------------------------- the kernel classes with emulated ops


def _type_bits_and_bias(type_id):
    return (type_id >> 8) & 0xFF, (type_id >> 17) & 0xFFFFFFFF


@pytest.fixture
def emulated_ops(monkeypatch):
    """vLLM's repack ops as the identity and the GEMMs as the emulation, so the classes run on CPU."""
    from vllm_modelslim.kernels.weight_only import vllm_machete, vllm_marlin

    def machete_mm(x, words, type_id, scales, zeros, group_size):
        bits, bias = _type_bits_and_bias(type_id)
        assert bias == (0 if zeros is not None else 1 << (bits - 1))  # uint4/uint8 with zeros, else b8/b128
        assert group_size == -1 or group_size * scales.shape[0] == x.shape[1]
        layout = GptqLayout(words, scales, zeros, type_id, group_size)
        return emulate(VllmMacheteWeightOnly, layout, bits, x)

    def marlin_gemm(x, words, scales, zeros, workspace, type_id, size_n, size_k):
        bits, bias = _type_bits_and_bias(type_id)
        assert bias == (0 if zeros.numel() else 1 << (bits - 1))
        assert (size_n, size_k) == (words.shape[1], x.shape[1])
        group = -1 if scales.shape[0] == 1 else size_k // scales.shape[0]
        return emulate(VllmMarlinWeightOnly, GptqLayout(words, scales, zeros, type_id, group), bits, x)

    monkeypatch.setattr(vllm_machete, "machete_prepack_b", lambda words, act_dtype, type_id: words)
    monkeypatch.setattr(vllm_machete, "machete_mm", machete_mm)
    monkeypatch.setattr(vllm_marlin, "gptq_marlin_repack", lambda words, k, n, bits: words)
    monkeypatch.setattr(vllm_marlin, "marlin_workspace", lambda device, n: torch.zeros(1, dtype=torch.int32))
    monkeypatch.setattr(vllm_marlin, "marlin_gemm", marlin_gemm)
    for kernel in (VllmMacheteWeightOnly, VllmMarlinWeightOnly):
        monkeypatch.setattr(kernel, "is_supported", classmethod(lambda cls, device_type: (True, None)))
        monkeypatch.setattr(kernel, "device_types", None)


@pytest.mark.parametrize(("kernel", "bits", "group", "zero_points"), CASES[1:4] + CASES[6:])
def test_kernel_classes_with_emulated_ops(emulated_ops, kernel, bits, group, zero_points):
    """``__init__`` → repack → ``forward`` (+ bias), ops emulated: the class passes what the layout says."""
    n, k, m, dtype = 256, 512, 3, torch.bfloat16
    group = group or k
    q, scale, zp = quantized_layer(n, k, group, bits, zero_points, seed=12)
    layer = kernel(config(n, k, group, dtype, bits, zp), q, scale, zp)
    assert layer.copies_weight and layer.weight.dtype == torch.int32
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(13)).to(dtype)
    bias = torch.randn(n, generator=torch.Generator().manual_seed(14))
    y = layer(x, bias)
    assert y.dtype == dtype and y.shape == (m, n)
    assert relative_error(y, weight_only_reference(x, q, scale, zp, bias, out_dtype=F64)) <= REL_TOL


def test_w4a8_kernel_class_with_emulated_ops(emulated_ops):
    n, k, m, group = 256, 512, 4, 128
    g = torch.Generator().manual_seed(15)
    q = torch.randint(-8, 8, (n, k), generator=g, dtype=torch.int8)
    scale = torch.rand(n, k // group, generator=g) * 0.02 + 0.002
    cfg = ScaledInt8MMConfig(k, n, "cpu", group_size=group)  # built directly: its is_supported wants CUDA
    mm = VllmWna16Int8ActScaledInt8MM(cfg, q, scale)
    assert isinstance(mm.inner, VllmMacheteWeightOnly) and mm.inner.config.bits == 4  # first that fits
    x_q, x_scale = quantize_dynamic_per_token(torch.randn(m, k, generator=g) * 2)
    bias = torch.randn(n, generator=g)
    y = mm(x_q, x_scale, bias, torch.float16)
    assert y.dtype == torch.float16
    want = scaled_int8_mm_reference(x_q, x_scale, q, scale, bias=bias, out_dtype=F64)
    assert relative_error(y, want) <= REL_TOL
    wide = VllmWna16Int8ActScaledInt8MM(cfg, q * 9, scale)  # int8 values: an 8-bit inner kernel
    assert wide.inner.config.bits == 8
