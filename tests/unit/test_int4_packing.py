import pytest
import torch

from vllm_modelslim.kernels.int4_packing import (
    pack_int4_pairs,
    pack_int4_to_int32,
    unpack_int4_from_int32,
    unpack_int4_pairs,
)


def test_int32_layout_is_lsb_first_with_offset_8():
    # Spec §5 (W4A16 unit-test facts): 0x76543210 unpacks to [-8 .. -1] for the first six values.
    packed = torch.tensor([[0x76543210]], dtype=torch.int32)
    assert unpack_int4_from_int32(packed, dim=1, size=6).tolist() == [[-8, -7, -6, -5, -4, -3]]
    assert unpack_int4_from_int32(packed.T.contiguous(), dim=0, size=6).T.tolist() == [
        [-8, -7, -6, -5, -4, -3]
    ]


def test_pairs_layout_low_nibble_first():
    # byte = (v[2j+1] << 4) | (v[2j] & 0xF)
    values = torch.tensor([[1], [-2], [7], [-8]], dtype=torch.int8)
    packed = pack_int4_pairs(values, dim=0)
    assert packed.view(torch.uint8).flatten().tolist() == [0xE1, 0x87]
    assert torch.equal(unpack_int4_pairs(packed, dim=0), values)


@pytest.mark.parametrize("shape, dim", [((6, 10), 0), ((6, 10), 1), ((2, 4, 6), 2), ((3, 8), -1)])
def test_pairs_roundtrip(shape, dim):
    values = torch.randint(-8, 8, shape, dtype=torch.int8)
    assert torch.equal(unpack_int4_pairs(pack_int4_pairs(values, dim), dim), values)


@pytest.mark.parametrize("shape, dim", [((5, 16), 1), ((5, 13), 1), ((24, 3), 0)])
def test_int32_roundtrip_with_padding(shape, dim):
    values = torch.randint(-8, 8, shape, dtype=torch.int8)
    packed = pack_int4_to_int32(values, dim)
    assert packed.dtype == torch.int32 and packed.shape[dim] == -(-shape[dim] // 8)
    assert torch.equal(unpack_int4_from_int32(packed, dim, size=shape[dim]), values)


def test_errors():
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        pack_int4_pairs(torch.tensor([[8], [0]], dtype=torch.int8), 0)
    with pytest.raises(ValueError, match="odd number"):
        pack_int4_pairs(torch.zeros(3, 2, dtype=torch.int8), 0)
    with pytest.raises(TypeError, match="int8"):
        unpack_int4_pairs(torch.zeros(2, 2, dtype=torch.int32), 0)
    with pytest.raises(TypeError, match="int32"):
        unpack_int4_from_int32(torch.zeros(2, 2, dtype=torch.int8), 1)
    with pytest.raises(ValueError, match="exceeds"):
        unpack_int4_from_int32(torch.zeros(2, 1, dtype=torch.int32), 1, size=9)
