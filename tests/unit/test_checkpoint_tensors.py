import struct

import torch

from vllm_modelslim.schemes.linear.checkpoint_tensors import DEQ_SCALE, fp32_from_int64_bits


def bits(value: float) -> int:
    return struct.unpack("<I", struct.pack("<f", value))[0]


def test_int64_deq_scale_is_decoded_from_its_low_32_bits():
    values = [1.5e-4, 0.03125, 2.0, -0.5]
    raw = torch.tensor([bits(v) for v in values], dtype=torch.int64)
    assert fp32_from_int64_bits(raw).tolist() == [
        struct.unpack("<f", struct.pack("<f", v))[0] for v in values
    ]
    # A sign-extended pattern (vllm-ascend's fused-MC2 writer) decodes the same.
    assert fp32_from_int64_bits(raw | (-(2**32)) * (raw >= 2**31)).tolist()[-1] == -0.5


def test_float_deq_scale_passes_through():
    t = torch.tensor([1e-3, 2e-3])
    assert fp32_from_int64_bits(t) is t


def test_deq_scale_declaration_accepts_both_dtypes():
    assert torch.int64 in DEQ_SCALE.dtypes and torch.float32 in DEQ_SCALE.dtypes
    assert DEQ_SCALE.param_dtype == torch.float32
