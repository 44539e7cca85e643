"""Expected q_proj size of attention with an output gate packed into q_proj (Qwen3-Next)."""

from __future__ import annotations

import pytest

from vllm_modelslim.format.shapes import projection_sizes

BASE = {"hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64}


@pytest.mark.parametrize(
    "extra, q_rows",
    [
        ({"model_type": "qwen3"}, 256),
        ({"model_type": "qwen3_next"}, 512),  # gate on by default, as in vLLM's Qwen3-Next
        ({"model_type": "qwen3_next", "attn_output_gate": False}, 256),
        ({"model_type": "some_model", "attn_output_gate": True}, 512),
    ],
)
def test_q_proj_rows_follow_the_output_gate(extra, q_rows):
    config = BASE | extra
    assert projection_sizes(config, "model.layers.3.self_attn.q_proj") == (q_rows, 256)
    assert projection_sizes(config, "model.layers.3.self_attn.k_proj") == (128, 256)
    assert projection_sizes(config, "model.layers.3.self_attn.o_proj") == (256, 256)
