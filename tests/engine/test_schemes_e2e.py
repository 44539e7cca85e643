"""Tool-made msmodelslim checkpoints served by a real vLLM engine with quantization="ascend".

For each checkpoint and activation dtype one in-process engine is started
(eager, and for each scheme also vLLM's default torch.compile mode) and:

* every linear layer of the model must run the plugin's scheme for its quant
  type (the description decides; lm_head stays unquantized);
* greedy generations are compared with the pure-torch reference forward of the
  same checkpoint (``vllm_modelslim.reference``). In float32 the tokens must be
  identical and log-probabilities agree to 1e-4 (2e-2 for W8A8_DYNAMIC, see
  ``FP32_LOGPROB_TOLERANCE``). In bfloat16, vLLM's and the
  reference's float rounding differ, so a sequence may legitimately branch at a
  near-tie: every token vLLM picks must be within 0.25 nats of the reference's
  best token and its log-probability within 0.3 nats of the reference's
  (observed: ≤ 0.11 and ≤ 0.15);
* teacher-forced top-1 agreement with the unquantized model is reported and
  must stay above 90%.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from vllm_modelslim.examples.tiny_qwen3 import held_out_texts
from vllm_modelslim.examples.vllm_runner import close_llm, greedy_generate, make_llm, prompt_top1
from vllm_modelslim.reference.model import ReferenceModel

pytestmark = pytest.mark.engine

RECIPES = {
    "w8a8_dynamic": "W8A8_DYNAMIC",
    "w8a8_static": "W8A8",
    "w8a8_static_fp32": "W8A8",  # deq_scale stored as int64 fp32 bits
    "w8a16": "W8A16",
    "w8a16_asym": "W8A16",
}
# (recipe, dtype, torch.compile): eager engines for every recipe and dtype, plus vLLM's
# default compiled mode (inductor fuses the schemes' small ops) for each scheme in bf16.
CASES = [(recipe, dtype, False) for recipe in RECIPES for dtype in ("float32", "bfloat16")]
CASES += [(recipe, "bfloat16", True) for recipe in ("w8a8_dynamic", "w8a8_static", "w8a16_asym")]
NEW_TOKENS = 32
# float32: all schemes match the reference to ~1e-5, except that per-token dynamic
# quantization turns fp32-level differences in its input into occasional rounding
# flips of single int8 activations, each worth up to ~6e-3 nats on this model.
FP32_LOGPROB_TOLERANCE = {"w8a8_dynamic": 2e-2}
DEFAULT_FP32_LOGPROB_TOLERANCE = 1e-4
BF16_TOP1_GAP = 0.25
BF16_LOGPROB_TOLERANCE = 0.3
PROMPT_TOKENS = 12

_references: dict[str, ReferenceModel] = {}


def reference_for(folder) -> ReferenceModel:
    key = str(folder)
    if key not in _references:
        _references[key] = ReferenceModel(folder)
    return _references[key]


@pytest.fixture(scope="module", params=CASES, ids=[f"{r}-{d}{'-compiled' if c else ''}" for r, d, c in CASES])
def engine(request, quantized):
    recipe, dtype, compiled = request.param
    folder = quantized(recipe)
    llm = make_llm(folder, "ascend", dtype=dtype, enforce_eager=not compiled)
    yield recipe, dtype, folder, llm, f"{recipe} {dtype}{' compiled' if compiled else ''}"
    close_llm(llm)


@pytest.fixture(scope="module")
def prompts(demo_model):
    tokenizer = AutoTokenizer.from_pretrained(str(demo_model))
    return [tokenizer(text)["input_ids"][:PROMPT_TOKENS] for text in held_out_texts(8)]


@pytest.fixture(scope="module")
def eval_sequences(demo_model):
    tokenizer = AutoTokenizer.from_pretrained(str(demo_model))
    return [tokenizer(text)["input_ids"][:64] for text in held_out_texts(12)]


def describe_layers(model: torch.nn.Module) -> dict[str, tuple[str, str | None]]:
    from vllm.model_executor.layers.linear import LinearBase

    table = {}
    for name, module in model.named_modules():
        if isinstance(module, LinearBase) or name.endswith("lm_head"):
            method = module.quant_method
            scheme = getattr(method, "scheme", None)
            table[name] = (type(method).__name__, getattr(scheme, "quant_type", None))
    return table


def test_every_linear_layer_runs_its_scheme(engine):
    recipe, _, _, llm, _ = engine
    (table,) = llm.apply_model(describe_layers)
    quantized = {name: entry for name, entry in table.items() if not name.endswith("lm_head")}
    assert len(quantized) == 2 * 4  # qkv, o, gate_up, down per layer
    for name, (method, quant_type) in quantized.items():
        assert method == "ModelSlimLinearMethod", name
        assert quant_type == RECIPES[recipe], name
    assert table["lm_head"][0] == "UnquantizedEmbeddingMethod"


def test_greedy_tokens_match_reference(engine, prompts):
    recipe, dtype, folder, llm, label = engine
    reference = reference_for(folder)
    generations = greedy_generate(llm, prompts, NEW_TOKENS)
    identical = 0
    worst_gap = worst_logprob = 0.0
    for gen in generations:
        ref = reference.greedy(gen.prompt_ids, NEW_TOKENS)
        identical += gen.token_ids == ref.token_ids
        if dtype == "float32":
            assert gen.token_ids == ref.token_ids
            diffs = [abs(a - b) for a, b in zip(gen.logprobs, ref.logprobs, strict=True)]
            worst_logprob = max(worst_logprob, *diffs)
            continue
        # bf16: teacher-force vLLM's sequence through the reference.
        logprobs = reference.token_logprobs(gen.prompt_ids + gen.token_ids)[len(gen.prompt_ids) - 1 :]
        for step, (token, vllm_logprob) in enumerate(zip(gen.token_ids, gen.logprobs, strict=True)):
            worst_gap = max(worst_gap, float(logprobs[step].max() - logprobs[step, token]))
            worst_logprob = max(worst_logprob, abs(float(logprobs[step, token]) - vllm_logprob))
    print(
        f"\n{label}: identical greedy sequences {identical}/{len(generations)}, "
        f"max |logprob - reference| {worst_logprob:.2e}, max top-1 gap of vLLM's token {worst_gap:.3f}"
    )
    if dtype == "float32":
        assert worst_logprob <= FP32_LOGPROB_TOLERANCE.get(recipe, DEFAULT_FP32_LOGPROB_TOLERANCE)
    else:
        # Observed on a Xeon (AVX512): gap <= 0.11, |logprob diff| <= 0.15; a wrong zero-point
        # sign gives 9.0 and 6.9. Identical sequences are reported, not asserted: bf16 rounding
        # differs between vLLM's CPU kernels and the reference, so sequences branch at near-ties.
        assert worst_gap <= BF16_TOP1_GAP
        assert worst_logprob <= BF16_LOGPROB_TOLERANCE


def test_top1_agreement_with_unquantized_model(engine, demo_model, eval_sequences):
    _, _, _, llm, label = engine
    float_model = reference_for(demo_model)
    predicted = prompt_top1(llm, eval_sequences)
    agree = total = 0
    for sequence, vllm_top1 in zip(eval_sequences, predicted, strict=True):
        float_top1 = float_model.logits(sequence)[:-1].argmax(dim=-1).tolist()
        agree += sum(a == b for a, b in zip(vllm_top1, float_top1, strict=True))
        total += len(float_top1)
    share = agree / total
    print(f"\n{label}: top-1 agreement with the unquantized model {agree}/{total} = {share:.1%}")
    assert share >= 0.9
