"""Tensor declarations shared by the ModelSlim linear schemes (spec §4.1-§4.3, ERRATA 2).

o = out features (``N``), i = in features (``K``) of one shard. Scales are kept
in float32 parameters whatever their on-disk float dtype (msmodelslim writes
f32 for bf16 models, the old pipeline bf16).
"""

from __future__ import annotations

import torch

from vllm_modelslim.format.tensor_spec import FLOAT_DTYPES, CheckpointTensor, TensorRole


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
    "weight_scale", TensorRole.PER_CHANNEL, ("N", 1), FLOAT_DTYPES, torch.float32, fill=1.0
)
"""Per-output-channel weight scale ``[o, 1]``."""

WEIGHT_OFFSET = CheckpointTensor(
    "weight_offset", TensorRole.PER_CHANNEL, ("N", 1), FLOAT_DTYPES, torch.float32, optional=True
)
"""Per-output-channel weight zero point ``[o, 1]``: ``w = (q − offset)·scale`` (ERRATA 1)."""

OPTIONAL_WEIGHT_SCALE = CheckpointTensor(
    "weight_scale", TensorRole.PER_CHANNEL, ("N", 1), FLOAT_DTYPES, torch.float32, optional=True, fill=1.0
)
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
)
"""``input_scale·weight_scale`` ``[o]``: f32, or int64 holding f32 bits (fp16/fp32 models)."""

INPUT_SCALE = CheckpointTensor(
    "input_scale", TensorRole.PER_SHARD, (1,), FLOAT_DTYPES, torch.float32, fill=1.0
)
"""Static per-tensor activation scale ``[1]``."""

INPUT_OFFSET = CheckpointTensor(
    "input_offset", TensorRole.PER_SHARD, (1,), (*FLOAT_DTYPES, torch.int8), torch.float32
)
"""Static per-tensor activation zero point ``[1]``, integer-valued (f32 on disk in msmodelslim 26.1)."""
