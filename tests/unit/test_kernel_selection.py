"""Kernel selection: the logged choice and VLLM_MODELSLIM_DISABLED_KERNELS."""

import logging
import uuid

import pytest
import torch

from vllm_modelslim.kernels.scaled_int8_mm import (
    ReferenceScaledInt8MM,
    TorchIntMMScaledInt8MM,
    make_scaled_int8_mm,
    scaled_int8_mm_reference,
)
from vllm_modelslim.kernels.selection import DISABLED_KERNELS_ENV, DISABLED_REASON, choose_kernel
from vllm_modelslim.kernels.weight_only import (
    WEIGHT_ONLY_INT8_KERNELS,
    CpuInt4PackWeightOnlyInt4,
    DequantMatmulWeightOnly,
    Int8PackWeightOnlyInt8,
    ReferenceWeightOnly,
    WeightOnlyConfig,
    dequantize_weight,
    make_weight_only_int4,
    make_weight_only_int8,
    weight_only_reference,
)

LOGGER = "vllm_modelslim.kernels"


def label() -> str:
    """A label no other selection used, so that its first line is logged whatever ran before."""
    return f"test-{uuid.uuid4().hex[:8]}"


def selection_lines(caplog, tag):
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and tag in r.getMessage()]


def int8_case(n=32, k=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    w_q = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g)
    scale = torch.rand(n, generator=g) * 0.01 + 1e-3
    zp = torch.randint(-20, 20, (n,), generator=g).float()
    x = torch.randn(5, k, generator=g).to(torch.bfloat16)
    bias = torch.randn(n, generator=g).to(torch.bfloat16)
    return x, w_q, scale, zp, bias


def test_choice_is_logged_once_with_the_skipped_kernels(caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger=LOGGER)
    # cpu_int8_avx512 would take these float32 layers; the VNNI one (bf16 only) is disabled too so
    # that the line is the same on every host
    monkeypatch.setenv(DISABLED_KERNELS_ENV, "cpu_int8_vnni_w8a16,cpu_int8_avx512")
    tag = label()
    _, w_q, scale, _, _ = int8_case()
    for _ in range(3):  # three layers of the same kind
        kernel = make_weight_only_int8(w_q, scale, None, torch.float32, label=tag)
    assert isinstance(kernel, DequantMatmulWeightOnly)
    lines = selection_lines(caplog, tag)
    assert lines == [
        f"Selected kernel dequant_matmul for {tag} (weight-only int8 GEMM, per-channel scales); "
        f"skipped: cpu_int8_vnni_w8a16 ({DISABLED_REASON}); cpu_int8_avx512 ({DISABLED_REASON}); "
        f"cpu_int8pack ({reason(Int8PackWeightOnlyInt8, torch.float32)})"
    ]


def test_kernels_of_other_devices_are_not_listed_as_skipped(caplog):
    """On CPU the CUDA kernels heading the list are passed over silently; on CUDA the CPU ones are."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    cpu_tag, cuda_tag = label(), label()
    cpu_config = WeightOnlyConfig(64, 32, 64, torch.float32, bits=8, device_type="cpu")
    cuda_config = WeightOnlyConfig(64, 32, 64, torch.bfloat16, bits=8, device_type="cuda")
    choose_kernel(WEIGHT_ONLY_INT8_KERNELS, cpu_config, cpu_tag)
    choose_kernel(WEIGHT_ONLY_INT8_KERNELS, cuda_config, cuda_tag)
    (cpu_line,) = selection_lines(caplog, cpu_tag)
    (cuda_line,) = selection_lines(caplog, cuda_tag)
    cuda_only = [k.name for k in WEIGHT_ONLY_INT8_KERNELS if k.device_types == frozenset({"cuda"})]
    cpu_only = [k.name for k in WEIGHT_ONLY_INT8_KERNELS if k.device_types == frozenset({"cpu"})]
    assert cuda_only and cpu_only
    assert not any(name in cpu_line for name in cuda_only)
    assert not any(name in cuda_line for name in cpu_only)
    # Without a GPU (or without vLLM's CUDA ops) the CUDA kernels are skipped on "cuda" with a reason.
    if not torch.cuda.is_available():
        assert all(f"{name} (" in cuda_line for name in cuda_only)


def reason(kernel, act_dtype):
    config = WeightOnlyConfig(64, 32, 64, act_dtype, bits=8)
    ok, why = kernel.is_supported("cpu")
    return why if not ok else kernel.can_implement(config)[1]


def test_a_new_choice_for_the_same_purpose_is_logged_again(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    tag = label()
    _, w_q, scale, _, _ = int8_case()
    make_weight_only_int8(w_q, scale, None, torch.float32, label=tag)
    make_weight_only_int8(w_q, scale, None, torch.float32, label=tag)
    make_weight_only_int8(w_q, scale, None, torch.float32, kernel=ReferenceWeightOnly, label=tag)
    assert len(selection_lines(caplog, tag)) == 1  # a forced kernel is not a selection: no line


@pytest.mark.skipif(not Int8PackWeightOnlyInt8.is_supported("cpu")[0], reason="no CPU int8pack op")
def test_disabling_the_fast_int8_kernel_picks_the_next_one(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    x, w_q, scale, zp, bias = int8_case()
    assert isinstance(make_weight_only_int8(w_q, scale, zp, torch.bfloat16), Int8PackWeightOnlyInt8)
    monkeypatch.setenv(DISABLED_KERNELS_ENV, " cpu_int8pack , cpu_int8_avx512,cpu_int8_vnni_w8a16")
    tag = label()
    kernel = make_weight_only_int8(w_q, scale, zp, torch.bfloat16, label=tag)
    assert isinstance(kernel, DequantMatmulWeightOnly)
    assert f"cpu_int8pack ({DISABLED_REASON})" in selection_lines(caplog, tag)[0]
    got = kernel(x, bias)
    want = weight_only_reference(x, w_q, scale, zp, bias, torch.float64)
    magnitude = x.double().abs() @ dequantize_weight(w_q, scale, zp).abs().T
    bound = 4 * torch.finfo(torch.bfloat16).eps * (magnitude + want.abs())
    assert got.dtype == torch.bfloat16 and bool(((got.double() - want).abs() <= bound).all())


@pytest.mark.skipif(not CpuInt4PackWeightOnlyInt4.is_supported("cpu")[0], reason="no CPU int4pack op")
def test_disabling_the_int4pack_kernel(monkeypatch):
    g = torch.Generator().manual_seed(1)
    q = torch.randint(-8, 8, (64, 256), dtype=torch.int8, generator=g)
    scale = torch.rand(64, 4, generator=g) * 0.05 + 1e-3
    monkeypatch.setenv(DISABLED_KERNELS_ENV, "cpu_int4_avx512bf16")  # first for bf16 where it builds
    assert isinstance(make_weight_only_int4(q, scale, None, torch.bfloat16), CpuInt4PackWeightOnlyInt4)
    monkeypatch.setenv(DISABLED_KERNELS_ENV, "cpu_int4pack,cpu_int4_avx512bf16")
    assert isinstance(make_weight_only_int4(q, scale, None, torch.bfloat16), DequantMatmulWeightOnly)


def test_disabling_every_fast_scaled_int8_kernel_leaves_the_reference(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    g = torch.Generator().manual_seed(2)
    w_q = torch.randint(-128, 128, (24, 40), dtype=torch.int8, generator=g)
    scale = torch.rand(24, generator=g) * 0.01
    x_q = torch.randint(-128, 128, (3, 40), dtype=torch.int8, generator=g)
    x_scale = torch.rand(3, generator=g)
    assert not isinstance(make_scaled_int8_mm(w_q, scale), ReferenceScaledInt8MM)
    monkeypatch.setenv(DISABLED_KERNELS_ENV, "vllm_onednn,torch_int_mm")
    tag = label()
    kernel = make_scaled_int8_mm(w_q, scale, label=tag)
    assert isinstance(kernel, ReferenceScaledInt8MM)
    (line,) = selection_lines(caplog, tag)
    assert line.startswith(f"Selected kernel reference for {tag} (scaled int8 GEMM, per-channel scales)")
    assert f"torch_int_mm ({DISABLED_REASON})" in line and "vllm_onednn (" in line
    want = scaled_int8_mm_reference(x_q, x_scale, w_q, scale, out_dtype=torch.float32)
    assert torch.equal(kernel(x_q, x_scale, None, torch.float32), want)


def test_a_forced_kernel_ignores_the_variable(monkeypatch):
    monkeypatch.setenv(DISABLED_KERNELS_ENV, "torch_int_mm")
    w_q = torch.ones(8, 16, dtype=torch.int8)
    assert isinstance(
        make_scaled_int8_mm(w_q, torch.ones(8), kernel=TorchIntMMScaledInt8MM), TorchIntMMScaledInt8MM
    )


def test_the_reference_kernel_cannot_be_disabled(monkeypatch):
    monkeypatch.setenv(DISABLED_KERNELS_ENV, "dequant_matmul,reference")
    _, w_q, scale, _, _ = int8_case()
    with pytest.raises(ValueError, match=rf"{DISABLED_KERNELS_ENV} may not disable \['reference'\]"):
        make_weight_only_int8(w_q, scale, None, torch.float32)


def test_unknown_names_list_the_valid_ones(monkeypatch):
    monkeypatch.setenv(DISABLED_KERNELS_ENV, "cpu_int8pack,int8pack_typo")
    w_q = torch.ones(8, 16, dtype=torch.int8)
    with pytest.raises(ValueError, match=r"unknown kernels \['int8pack_typo'\]") as error:
        make_scaled_int8_mm(w_q, torch.ones(8))
    for name in ("cpu_int4pack", "cpu_int8pack", "dequant_matmul", "torch_int_mm", "vllm_onednn"):
        assert name in str(error.value)
    assert "reference" not in str(error.value).split("valid names:")[1]
