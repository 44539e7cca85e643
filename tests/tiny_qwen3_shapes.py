"""Shapes of a tiny Qwen3-style decoder, for hand-built header-only checkpoints in tests.

q 64, k/v 32 (2 KV heads of 16), o 64x64, gate/up 128x64, down 64x128.
"""


def tiny_qwen3_config(num_hidden_layers: int) -> dict:
    """config.json of the tiny model with ``num_hidden_layers`` decoder layers."""
    return {
        "model_type": "qwen3",
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "intermediate_size": 128,
        "num_hidden_layers": num_hidden_layers,
    }


PROJECTION_SIZES = {
    "self_attn.q_proj": (64, 64),
    "self_attn.k_proj": (32, 64),
    "self_attn.v_proj": (32, 64),
    "self_attn.o_proj": (64, 64),
    "mlp.gate_proj": (128, 64),
    "mlp.up_proj": (128, 64),
    "mlp.down_proj": (64, 128),
}
"""Each decoder layer's projections: checkpoint name → (N, K)."""
