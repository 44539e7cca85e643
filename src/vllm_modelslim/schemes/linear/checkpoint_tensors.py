"""Tensor declarations shared by the ModelSlim linear schemes (spec §4.1-§4.3, ERRATA 2).

o = out features (``N``), i = in features (``K``) of one shard. Scales are kept
in float32 parameters whatever their on-disk float dtype (msmodelslim writes
f32 for bf16 models, the old pipeline bf16).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from vllm_modelslim.format.tensor_spec import FLOAT_DTYPES, CheckpointTensor, TensorRole
from vllm_modelslim.format.value_checks import ValueRule


def fp32_from_int64_bits(t: torch.Tensor) -> torch.Tensor:
    """Decode ModelSlim's int64 ``deq_scale``: the low 32 bits hold an fp32 bit pattern.

    msmodelslim writes ``deq_scale`` as int64 for fp16 and fp32 models (ERRATA
    2; vllm-ascend's ``_process_scale`` zero-extends the bits the same way).
    Float tensors pass through unchanged.
    """
    if t.dtype != torch.int64:
        return t
    low = (t & 0xFFFFFFFF).to(torch.int64)
    low = torch.where(low >= 2**31, low - 2**32, low).to(torch.int32)
    return low.view(torch.float32)


INT8_WEIGHT = CheckpointTensor("weight", TensorRole.WEIGHT, ("N", "K"), (torch.int8,), torch.int8)
"""int8 ``[o, i]`` weight."""

WEIGHT_SCALE = CheckpointTensor(
    "weight_scale", TensorRole.PER_CHANNEL, ("N", 1), FLOAT_DTYPES, torch.float32, fill=1.0,
    values=ValueRule.POSITIVE,
)  # fmt: skip
"""Per-output-channel weight scale ``[o, 1]``."""

WEIGHT_OFFSET = CheckpointTensor(
    "weight_offset", TensorRole.PER_CHANNEL, ("N", 1), FLOAT_DTYPES, torch.float32, optional=True,
    values=ValueRule.FINITE,
)  # fmt: skip
"""Per-output-channel weight zero point ``[o, 1]``: ``w = (q − offset)·scale`` (ERRATA 1)."""

SYMMETRIC_WEIGHT_OFFSET = replace(WEIGHT_OFFSET, values=ValueRule.ZERO)
"""``weight_offset`` of the integer-activation schemes: stored, but must be all zero."""

OPTIONAL_SYMMETRIC_WEIGHT_OFFSET = replace(SYMMETRIC_WEIGHT_OFFSET, optional=True)
"""W8A8_DYNAMIC's ``weight_offset``: msmodelslim writes zeros, LLM-Compressor nothing (spec §6)."""

OPTIONAL_WEIGHT_SCALE = replace(WEIGHT_SCALE, optional=True)
"""``weight_scale`` where only old-pipeline/MIX checkpoints carry it (static W8A8)."""

QUANT_BIAS = CheckpointTensor("quant_bias", TensorRole.PER_CHANNEL, ("N",), (torch.int32,), torch.int32)
"""int32 ``[o]`` bias in accumulator units: ``round(bias/deq_scale) − input_offset·Σ_k W_q``."""

DEQ_SCALE = CheckpointTensor(
    "deq_scale",
    TensorRole.PER_CHANNEL,
    ("N",),
    (*FLOAT_DTYPES, torch.int64),
    torch.float32,
    decode=fp32_from_int64_bits,
    fill=1.0,
    values=ValueRule.POSITIVE,
)
"""``input_scale·weight_scale`` ``[o]``: f32, or int64 holding f32 bits (fp16/fp32 models)."""

INPUT_SCALE = CheckpointTensor(
    "input_scale", TensorRole.PER_SHARD, (1,), FLOAT_DTYPES, torch.float32, fill=1.0,
    values=ValueRule.POSITIVE,
)  # fmt: skip
"""Static per-tensor activation scale ``[1]``."""

INPUT_OFFSET = CheckpointTensor(
    "input_offset", TensorRole.PER_SHARD, (1,), (*FLOAT_DTYPES, torch.int8), torch.float32,
    values=ValueRule.INT8,
)  # fmt: skip
"""Static per-tensor activation zero point ``[1]``, integer-valued (f32 on disk in msmodelslim 26.1)."""


# --- int4 layouts (spec §4.4-§4.7, ERRATA 4-6) -----------------------------------------

INT4_PAIRS_WEIGHT = CheckpointTensor(
    "weight", TensorRole.WEIGHT, ("N/2", "K"), (torch.int8,), torch.int8, packed_dim=0, packed_factor=2
)
"""Two int4 per int8 along the **output** dim ``[o/2, i]``: low nibble = row 2k (ModelSlim "1.0.0")."""

INT4_IN_INT8_WEIGHT = CheckpointTensor("weight", TensorRole.WEIGHT, ("N", "K"), (torch.int8,), torch.int8)
"""One int4 value per int8 ``[o, i]`` (W4A4, legacy W4A8 version "0")."""

INT4_IN_INT32_WEIGHT = CheckpointTensor(
    "weight_packed",
    TensorRole.WEIGHT,
    ("N", "K/8"),
    (torch.int32,),
    torch.int32,
    packed_dim=1,
    packed_factor=8,
)
"""LLM-Compressor ``pack-quantized``: eight offset-8 int4 per int32 along the input dim ``[o, i/8]``."""

PACKED_WEIGHT_SHAPE = CheckpointTensor(
    "weight_shape", TensorRole.PER_SHARD_TENSOR, (2,), (torch.int32, torch.int64), torch.int64
)
"""LLM-Compressor's logical ``[o, i]`` of a packed weight."""

GROUP_WEIGHT_SCALE = CheckpointTensor(
    "weight_scale", TensorRole.PER_GROUP, ("N", "G"), FLOAT_DTYPES, torch.float32, fill=1.0,
    values=ValueRule.POSITIVE,
)  # fmt: skip
"""Per-group weight scale ``[o, i/g]``."""

GROUP_WEIGHT_OFFSET = CheckpointTensor(
    "weight_offset", TensorRole.PER_GROUP, ("N", "G"), FLOAT_DTYPES, torch.float32, optional=True,
    values=ValueRule.FINITE,
)  # fmt: skip
"""Per-group zero point ``[o, i/g]``: ``w = (q − offset)·scale``."""

SECOND_WEIGHT_SCALE = CheckpointTensor(
    "weight_scale_second", TensorRole.PER_GROUP, ("N", "G"), FLOAT_DTYPES, torch.float32, fill=1.0,
    values=ValueRule.POSITIVE,
)  # fmt: skip
"""Legacy per-group W4A8 second-level scale ``[o, i/g]`` (times the per-channel ``weight_scale``)."""

SECOND_WEIGHT_OFFSET = CheckpointTensor(
    "weight_offset_second", TensorRole.PER_GROUP, ("N", "G"), (*FLOAT_DTYPES, torch.int64), torch.float32,
    optional=True, values=ValueRule.ZERO,
)  # fmt: skip
"""Legacy per-group W4A8 second-level zero point ``[o, i/g]`` (int64 zeros from msmodelslim)."""


def scale_bias(row_parallel: bool) -> CheckpointTensor:
    """W4A8 ``scale_bias``: ``[o, 1]``, or ``[o, 16]`` partial sums for o_proj/down_proj (spec §4.5).

    It is the NPU kernel's correction term ``8·Σ_k W_q·s``; the exact product
    needs no correction, so it is loaded (the checkpoint has it) but unused.
    """
    return CheckpointTensor(
        "scale_bias", TensorRole.PER_CHANNEL, ("N", 16 if row_parallel else 1), (torch.float32,),
        torch.float32, optional=True,
    )  # fmt: skip


CLIP_RATIO = CheckpointTensor(
    "clip_ratio", TensorRole.PER_SHARD, (1,), FLOAT_DTYPES, torch.float32, fill=1.0, values=ValueRule.RATIO
)
"""FlatQuant activation clip ratio ``[1]`` (≈ 0.98)."""

LEFT_TRANS = CheckpointTensor(
    "left_trans", TensorRole.PER_SHARD_TENSOR, ("*", "*"), FLOAT_DTYPES, torch.float32,
    values=ValueRule.FINITE,
)  # fmt: skip
"""FlatQuant left factor ``L`` ``[l, l]``."""

RIGHT_TRANS = replace(LEFT_TRANS, suffix="right_trans", optional=True)
"""FlatQuant right factor ``R`` ``[r, r]``; absent on o_proj (identity, ERRATA 6)."""
