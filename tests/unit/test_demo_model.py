"""The committed demo model: its size, its recorded training, and that it writes words it learned."""

import json
import math
import re
from dataclasses import asdict

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from vllm_modelslim.examples.tiny_qwen3 import TinyQwen3Spec, corpus_texts, demo_model_dir, held_out_texts

MAX_BYTES = 25 * 1024 * 1024
MAX_TRAIN_SECONDS = 15 * 60


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(demo_model_dir()))


@pytest.fixture(scope="module")
def model():
    return AutoModelForCausalLM.from_pretrained(str(demo_model_dir()), dtype=torch.float32)


def test_weights_and_tokenizer_fit_the_size_budget():
    files = [p for p in demo_model_dir().iterdir() if p.is_file()]
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.json", "merges.txt"} <= {
        p.name for p in files
    }
    assert sum(p.stat().st_size for p in files) <= MAX_BYTES


def test_the_committed_model_was_trained_with_the_code_s_spec_and_budget():
    training = json.loads((demo_model_dir() / "training.json").read_text())
    assert training["spec"] == asdict(TinyQwen3Spec())
    assert training["train_seconds"] <= MAX_TRAIN_SECONDS
    assert training["doc_package"].startswith("python3.11-doc_")
    config = json.loads((demo_model_dir() / "config.json").read_text())
    spec = TinyQwen3Spec()
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (
        spec.num_hidden_layers,
        spec.hidden_size,
        spec.vocab_size,
    )


def test_greedy_continuations_are_made_of_english_words(tokenizer, model):
    # Words of the continuations must be words of the standard library's docstrings
    # (an untrained model of the same shape, with this tokenizer: 70-74 %).
    vocabulary = {w.lower() for text in corpus_texts() for w in re.findall(r"[A-Za-z]+", text)}
    words = []
    for prompt in ("The list data type has", "A dictionary is", "If the file does not exist,"):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        out = model.generate(ids, max_new_tokens=32, do_sample=False)
        words += re.findall(r"[A-Za-z]+", tokenizer.decode(out[0, ids.shape[1] :]))
    assert len(words) >= 30
    known = sum(w.lower() in vocabulary for w in words) / len(words)
    assert known >= 0.9, words


def test_held_out_perplexity_is_that_of_a_trained_model(tokenizer, model):
    # 4096-token vocabulary: an untrained model scores ~4000, the previous 2-layer demo model
    # (300 steps on docstrings) ~580, the committed model ~130.
    total_nll, positions = 0.0, 0
    with torch.no_grad():
        for text in held_out_texts(12):
            ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :128]
            total_nll += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
            positions += ids.shape[1] - 1
    assert math.exp(total_nll / positions) < 200


def test_a_missing_demo_model_says_how_to_rebuild_it(tmp_path, monkeypatch):
    from vllm_modelslim.examples import tiny_qwen3

    monkeypatch.setattr(tiny_qwen3, "DEMO_MODEL_DIR", tmp_path / "demo_model")
    with pytest.raises(FileNotFoundError, match=r"demo_model: .*scripts/train_demo_model.py"):
        tiny_qwen3.demo_model_dir()
