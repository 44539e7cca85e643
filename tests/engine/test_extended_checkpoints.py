"""Extended (slow) msmodelslim configurations: run with ``pytest -m extended``.

W4A4_DYNAMIC with msmodelslim's full autoround recipe (20 iterations, minutes
on two cores): the same float32 reference check as the fast 2-iteration
checkpoint of ``test_schemes_e2e``.
"""

from __future__ import annotations

import pytest
from e2e_compare import compare_with_reference, prompt_sequences

from vllm_modelslim.examples.vllm_runner import close_llm, make_llm
from vllm_modelslim.reference.model import ReferenceModel

pytestmark = [pytest.mark.engine, pytest.mark.extended]


@pytest.mark.parametrize("recipe, quant_type", [("w4a4_dynamic_autoround", "W4A4_DYNAMIC")])
def test_slow_recipe_matches_reference(quantized, demo_model, recipe, quant_type):
    folder = quantized(recipe)
    prompts = prompt_sequences(demo_model)
    llm = make_llm(folder, "ascend", dtype="float32")
    try:
        compare_with_reference(llm, ReferenceModel(folder), prompts, "float32", quant_type, recipe)
    finally:
        close_llm(llm)
