"""The hand-made ModelSlim-layout writer (W8A8_DYNAMIC / W8A16 from a float checkpoint)."""

import json

import pytest
import torch
from safetensors.torch import save_file

from vllm_modelslim.examples.handmade_checkpoints import read_safetensors
from vllm_modelslim.examples.modelslim_writer import write_modelslim_checkpoint
from vllm_modelslim.format import load_description


@pytest.fixture
def float_checkpoint(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "embeddings.word_embeddings.weight": torch.randn(50, 8, generator=g),
        "encoder.layer.0.attention.self.query.weight": torch.randn(8, 8, generator=g),
        "encoder.layer.0.attention.self.query.bias": torch.randn(8, generator=g),
        "encoder.layer.0.output.LayerNorm.weight": torch.ones(8),
        "encoder.layer.0.intermediate.dense.weight": torch.randn(16, 8, generator=g) * 0.1,
    }
    tensors["encoder.layer.0.intermediate.dense.weight"][3] = 0.0  # an all-zero row
    folder = tmp_path / "float"
    (folder / "1_Pooling").mkdir(parents=True)
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (folder / "1_Pooling" / "config.json").write_text("{}")
    return folder, tensors


@pytest.mark.parametrize("quant_type", ["W8A8_DYNAMIC", "W8A16"])
def test_writer_follows_msmodelslim_layout(float_checkpoint, tmp_path, quant_type):
    source, original = float_checkpoint
    out = write_modelslim_checkpoint(source, tmp_path / "out", quant_type)
    stored = read_safetensors(out)
    description = load_description(out)
    assert (out / "HANDMADE.md").exists() and (out / "1_Pooling" / "config.json").exists()
    assert description.settings["version"] == "1.0.0"
    for prefix in ("encoder.layer.0.attention.self.query", "encoder.layer.0.intermediate.dense"):
        q, scale, offset = (stored[f"{prefix}.{s}"] for s in ("weight", "weight_scale", "weight_offset"))
        assert q.dtype == torch.int8 and scale.shape == (q.shape[0], 1) and scale.dtype == torch.float32
        assert bool((offset == 0).all()) and bool((scale > 0).all())
        w = original[f"{prefix}.weight"]
        assert bool(((q.float() * scale - w).abs() <= scale / 2 + 1e-7).all())
        assert int(q.abs().max()) == 127
        for suffix in ("weight", "weight_scale", "weight_offset"):
            assert description.entries[f"{prefix}.{suffix}"] == quant_type
    for name in ("embeddings.word_embeddings.weight", "encoder.layer.0.output.LayerNorm.weight"):
        assert description.entries[name] == "FLOAT"
        assert torch.equal(stored[name], original[name])
    assert torch.equal(
        stored["encoder.layer.0.attention.self.query.bias"],
        original["encoder.layer.0.attention.self.query.bias"],
    )


def test_writer_refuses_other_types(float_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="W4A16"):
        write_modelslim_checkpoint(float_checkpoint[0], tmp_path / "out", "W4A16")
