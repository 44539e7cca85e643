"""The static per-channel int8 KV-cache math (ModelSlim C8) against hand-computed values."""

import pytest
import torch
from kernel_bounds import assert_quantized, assert_within, kv_dequant_expectation, kv_quant_value

from vllm_modelslim.kernels.kv_cache_int8 import (
    Int8KVCacheParams,
    KVChannelQuant,
    dequantize_kv_int8,
    quantize_kv_int8,
)
from vllm_modelslim.schemes.attention import channel_quant


def params(heads: int = 2, dim: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(heads, dim, generator=g) * 0.05 + 0.01
    offset = torch.randint(-40, 40, (heads, dim), generator=g).float()
    return scale, offset


def test_quantize_is_round_of_x_over_scale_plus_offset_per_channel():
    scale, offset = params()
    x = torch.randn(5, 2, 4) * 0.5
    q = quantize_kv_int8(x, scale, offset)

    def one(t: int, h: int, d: int) -> int:
        return max(-128, min(127, round(float(x[t, h, d]) / float(scale[h, d]) + float(offset[h, d]))))

    expected = [[[one(t, h, d) for d in range(4)] for h in range(2)] for t in range(5)]
    assert q.dtype == torch.int8
    assert q.tolist() == expected  # Python's round() is half-to-even, as torch.round
    # The shared comparison (kernel_bounds), on more values: exact x/s + o, fp32 division and sum.
    x = torch.randn(64, 2, 4) * 2
    value, slack = kv_quant_value(x, scale, offset)
    assert_quantized(quantize_kv_int8(x, scale, offset), value, slack)


def test_quantize_rounds_ties_to_even_and_clamps_to_int8():
    scale = torch.ones(1, 4)
    offset = torch.zeros(1, 4)
    x = torch.tensor([[[2.5, 3.5, -2.5, 1000.0]], [[-1000.0, 127.4, -128.6, 0.5]]])
    assert quantize_kv_int8(x, scale, offset).tolist() == [[[2, 4, -2, 127]], [[-128, 127, -128, 0]]]


def test_dequantize_subtracts_the_offset_then_scales():
    scale, offset = params()
    q = torch.randint(-128, 128, (3, 2, 4), dtype=torch.int8)
    out = dequantize_kv_int8(q, scale, offset, torch.bfloat16)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, ((q.float() - offset) * scale).to(torch.bfloat16))
    assert_within(out, *kv_dequant_expectation(q, scale, offset, torch.bfloat16))
    assert_within(
        dequantize_kv_int8(q, scale, offset, torch.float32),
        *kv_dequant_expectation(q, scale, offset, torch.float32),
    )


def test_round_trip_error_is_at_most_half_a_step_inside_the_range():
    scale, offset = params()
    quant = KVChannelQuant(scale, offset, offset)
    x = (torch.rand(64, 2, 4) * 200 - 100 - offset) * scale  # q before clamping stays in [-100, 100]
    err = (quant.round_trip(x) - x).abs()
    assert bool((err <= scale / 2 + 1e-6).all())


def test_joint_parameters_put_keys_then_values_side_by_side():
    (ks, ko), (vs, vo) = params(seed=1), params(seed=2)
    k, v = KVChannelQuant(ks, ko, ko), KVChannelQuant(vs, vo, vo)
    joint = Int8KVCacheParams(k, v).joint
    x = torch.randn(7, 2, 8) * 0.3
    q = joint.quantize(x)
    assert torch.equal(q, torch.cat([k.quantize(x[..., :4]), v.quantize(x[..., 4:])], dim=-1))
    assert torch.equal(
        joint.dequantize(q, torch.float32),
        torch.cat([k.dequantize(q[..., :4], torch.float32), v.dequantize(q[..., 4:], torch.float32)], dim=-1),
    )


def test_c8_scheme_dequantizes_with_the_offset():
    """The one place the C8 rule is chosen: reads return (q − offset)·scale (ModelSlim), not q·scale."""
    scale, offset = params()
    quant = channel_quant(scale, offset)
    assert torch.equal(quant.dequant_offset, offset)
    x = (torch.rand(16, 2, 4) * 100 - 50 - offset) * scale
    assert bool(((quant.round_trip(x) - x).abs() <= scale / 2 + 1e-6).all())


def test_tensor_parallel_ranks_take_their_kv_heads():
    from vllm_modelslim.schemes.attention.c8_kv_cache import rank_kv_channels

    values = torch.arange(4 * 3, dtype=torch.float32)  # 4 KV heads of 3 channels
    assert rank_kv_channels(values, 4, 3, 0, 1).tolist() == values.reshape(4, 3).tolist()
    assert rank_kv_channels(values, 2, 3, 1, 2).tolist() == [[6, 7, 8], [9, 10, 11]]
    # 8 ranks, 4 heads: each head is replicated on two ranks
    assert [rank_kv_channels(values, 1, 3, r, 8)[0, 0].item() for r in range(8)] == [0, 0, 3, 3, 6, 6, 9, 9]
    assert rank_kv_channels(torch.tensor([0.5]), 2, 3, 0, 1).tolist() == [[0.5] * 3] * 2
    with pytest.raises(ValueError, match="whole number of kv heads"):
        rank_kv_channels(torch.arange(10.0), 2, 3, 0, 1)


class _RecordingImpl:
    """A stand-in for a non-CPU vLLM attention impl: records what it is asked to write."""

    def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping):
        self.written = (key, value)


class _Backend:
    forward_includes_kv_cache_update = False

    @staticmethod
    def get_name() -> str:
        return "FAKE_ATTN"


def test_other_backends_store_the_round_tripped_values_in_the_model_dtype():
    from types import SimpleNamespace

    from vllm_modelslim.plugin.int8_kv_attention import ROUND_TRIP, enable_int8_kv_cache

    (ks, ko), (vs, vo) = params(seed=3), params(seed=4)
    kv = Int8KVCacheParams(KVChannelQuant(ks, ko, ko), KVChannelQuant(vs, vo, vo))
    layer = SimpleNamespace(attn_backend=_Backend, impl=_RecordingImpl())
    assert enable_int8_kv_cache(layer, kv, int8_storage=True) == ROUND_TRIP
    key, value = torch.randn(5, 2, 4, dtype=torch.bfloat16), torch.randn(5, 2, 4, dtype=torch.bfloat16)
    layer.impl.do_kv_cache_update(layer, key, value, None, None)
    written_key, written_value = layer.impl.written
    assert written_key.dtype == torch.bfloat16
    assert torch.equal(written_key, kv.key.dequantize(kv.key.quantize(key), torch.bfloat16))
    assert torch.equal(written_value, kv.value.dequantize(kv.value.quantize(value), torch.bfloat16))


def test_backends_that_write_inside_forward_are_refused():
    from types import SimpleNamespace

    from vllm_modelslim.plugin.int8_kv_attention import enable_int8_kv_cache

    class FusedWrite(_Backend):
        forward_includes_kv_cache_update = True

    scale, offset = params()
    kv = Int8KVCacheParams(KVChannelQuant(scale, offset, offset), KVChannelQuant(scale, offset, offset))
    layer = SimpleNamespace(attn_backend=FusedWrite, impl=_RecordingImpl())
    with pytest.raises(NotImplementedError, match="FAKE_ATTN writes its KV cache inside forward"):
        enable_int8_kv_cache(layer, kv, int8_storage=True)
