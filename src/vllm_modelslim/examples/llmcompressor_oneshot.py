"""Quantize a local model with LLM-Compressor's ``oneshot`` (runs inside LLM-Compressor's virtualenv).

This file is executed by the virtualenv's interpreter (see
``llmcompressor_runner.py``) and imports nothing from this project:
``python llmcompressor_oneshot.py MODEL OUT SCHEME CALIB.jsonl``.

Schemes (compressed-tensors quantization args, symmetric int):

* ``w8a8_static``: int8 per-channel weights, int8 per-tensor static activations.
* ``w8a8_dynamic``: int8 per-channel weights, int8 per-token dynamic activations.
* ``w4a16``: int4 weights in groups of 32 (GPTQ), ``pack-quantized``.
* ``w4a16_channel``: int4 per-channel weights (round to nearest), ``pack-quantized``.
* ``w8a16``: int8 per-channel weights (round to nearest), ``pack-quantized``.
* ``w4a8_dynamic``: int4 per-channel weights, int8 per-token dynamic activations.

The LM head and MoE routers (``mlp.gate``) stay unquantized.
"""

from __future__ import annotations

import json
import sys


def _args(num_bits: int, strategy: str, group_size: int | None = None, dynamic: bool = False) -> dict:
    args = {"num_bits": num_bits, "type": "int", "symmetric": True, "strategy": strategy, "dynamic": dynamic}
    if group_size is not None:
        args["group_size"] = group_size
    return args


SCHEMES = {
    "w8a8_static": ("rtn", _args(8, "channel"), _args(8, "tensor")),
    "w8a8_dynamic": ("rtn", _args(8, "channel"), _args(8, "token", dynamic=True)),
    "w4a16": ("gptq", _args(4, "group", 32), None),
    "w4a16_channel": ("rtn", _args(4, "channel"), None),
    "w8a16": ("rtn", _args(8, "channel"), None),
    "w4a8_dynamic": ("rtn", _args(4, "channel"), _args(8, "token", dynamic=True)),
}


def main(model_dir: str, out_dir: str, scheme: str, calibration: str) -> None:
    """Run ``oneshot`` with ``SCHEMES[scheme]`` on ``model_dir`` (bf16) and save compressed to ``out_dir``.

    ``calibration``: JSON lines with an ``inputs_pretokenized`` text each (at most 256 tokens used).
    """
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    algorithm, weights, activations = SCHEMES[scheme]
    group = {"targets": ["Linear"], "weights": weights}
    if activations is not None:
        group["input_activations"] = activations
    ignore = ["lm_head", "re:.*mlp.gate$"]
    modifier_cls = GPTQModifier if algorithm == "gptq" else QuantizationModifier
    recipe = modifier_cls(config_groups={"group_0": group}, ignore=ignore)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    with open(calibration) as f:
        texts = [json.loads(line)["inputs_pretokenized"] for line in f if line.strip()]
    dataset = Dataset.from_dict({"input_ids": [tokenizer(t)["input_ids"][:256] for t in texts]})
    oneshot(
        model=model,
        dataset=dataset,
        recipe=recipe,
        num_calibration_samples=len(texts),
        max_seq_length=256,
    )
    model.save_pretrained(out_dir, save_compressed=True)
    tokenizer.save_pretrained(out_dir)


if __name__ == "__main__":
    main(*sys.argv[1:5])
