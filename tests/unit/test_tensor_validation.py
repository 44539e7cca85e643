"""validate_layer_tensors against a header index built in memory (no files needed)."""

from pathlib import Path

import pytest
import torch

from vllm_modelslim.format import CheckpointIndex, CheckpointTensorError, TensorInfo
from vllm_modelslim.format.tensor_spec import ShapeSymbols, validate_layer_tensors
from vllm_modelslim.schemes.linear.checkpoint_tensors import (
    GROUP_WEIGHT_SCALE,
    INT4_IN_INT32_WEIGHT,
    INT4_PAIRS_WEIGHT,
    LEFT_TRANS,
    WEIGHT_SCALE,
)

FILE = Path("/ckpt/quant_model_weights-00001-of-00001.safetensors")


def index(**tensors):
    infos = {
        name.replace("__", "."): TensorInfo(name.replace("__", "."), FILE, dtype, str(dtype), shape)
        for name, (dtype, shape) in tensors.items()
    }
    return CheckpointIndex(FILE.parent, infos)


def validate(idx, shards, n, k, specs, group_size=0):
    validate_layer_tensors(idx, "layer.qkv", "TYPE", shards, n, k, specs, group_size)


def test_symbols():
    s = ShapeSymbols(n=6, k=256, group_size=64)
    assert s.shape(("N/2", "K")) == [3, 256]
    assert s.shape(("N", "G")) == [6, 4]
    assert s.shape(("K/8", "*", 1)) == [32, None, 1]
    with pytest.raises(ValueError, match="pack factor 2"):
        ShapeSymbols(n=5, k=8).resolve("N/2")
    with pytest.raises(ValueError, match="group size 48 does not divide K = 256"):
        ShapeSymbols(n=4, k=256, group_size=48).resolve("G")
    assert ShapeSymbols(n=None, k=256).resolve("N") is None


def test_good_layer_passes():
    idx = index(
        a__weight=(torch.int8, (4, 256)),
        a__weight_scale=(torch.float32, (8, 4)),
        b__weight=(torch.int8, (2, 256)),
        b__weight_scale=(torch.bfloat16, (4, 4)),
    )
    validate(idx, ("a", "b"), [8, 4], 256, [INT4_PAIRS_WEIGHT, GROUP_WEIGHT_SCALE], group_size=64)


@pytest.mark.parametrize(
    "tensors, n, k, specs, group, message",
    [
        (
            {"a__weight_scale": (torch.float32, (8, 1))},
            [8],
            256,
            [INT4_PAIRS_WEIGHT],
            0,
            "no \\*.safetensors",
        ),
        ({"a__weight": (torch.float16, (4, 256))}, [8], 256, [INT4_PAIRS_WEIGHT], 0, "dtype"),
        ({"a__weight": (torch.int8, (8, 256))}, [8], 256, [INT4_PAIRS_WEIGHT], 0, r"expects \[4, 256\]"),
        ({"a__weight": (torch.int8, (3, 256))}, [7], 256, [INT4_PAIRS_WEIGHT], 0, "pack factor 2"),
        ({"a__weight_packed": (torch.int32, (8, 31))}, [8], 250, [INT4_IN_INT32_WEIGHT], 0, "pack factor 8"),
        ({"a__weight_scale": (torch.float32, (8, 5))}, [8], 256, [GROUP_WEIGHT_SCALE], 48, "does not divide"),
        ({"a__weight_scale": (torch.float32, (8,))}, [8], 256, [WEIGHT_SCALE], 0, "2 dims|shape"),
    ],
)
def test_bad_tensors_name_the_tensor_layer_and_file(tensors, n, k, specs, group, message):
    with pytest.raises(CheckpointTensorError, match=message) as info:
        validate(index(**tensors), ("a",), n, k, specs, group)
    assert str(FILE.parent) in str(info.value) and "layer.qkv" in str(info.value)


def test_per_shard_tensors_must_agree_in_shape():
    idx = index(a__left_trans=(torch.float32, (16, 16)), b__left_trans=(torch.float32, (8, 8)))
    with pytest.raises(CheckpointTensorError, match="different shapes"):
        validate(idx, ("a", "b"), None, None, [LEFT_TRANS])
