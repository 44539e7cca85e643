"""LLM-Compressor (compressed-tensors) checkpoints in a real vLLM engine, no ``--quantization`` flag.

Every checkpoint is made by the real LLM-Compressor (``oneshot`` on the demo
model or the tiny Qwen3-MoE, in its own virtualenv). vLLM detects the format
and builds its own compressed-tensors schemes; their GEMMs must run this
project's kernels (first in vLLM's CPU kernel lists), MoE experts the
ModelSlim MoE scheme of the equivalent quant type, and the engine must
reproduce the pure-torch reference's greedy tokens (rules of ``e2e_compare.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch
from e2e_compare import (
    TOP1_FLOOR,
    compare_with_reference,
    evaluation_sequences,
    prompt_sequences,
    reference_for,
    top1_agreement,
)

from model_folders import layer_count
from vllm_modelslim.examples.vllm_runner import close_llm, make_llm
from vllm_modelslim.plugin.compressed_tensors import KERNELS_ENV
from vllm_modelslim.plugin.compressed_tensors.kernel_choice import vllm_cpu_int8_path

INT8 = ("CompressedTensorsW8A8Int8", "ModelSlimInt8ScaledMMLinearKernel")
WNA16 = ("CompressedTensorsWNA16", "ModelSlimWNA16LinearKernel")
# ``auto``: vLLM's own int8 kernel where it is exact for this layer and dtype (oneDNN with
# VNNI/AMX; on AMX CPUs its SGL path only for bf16/fp16), ours elsewhere; ours for weight-only.
# The auto case runs float32: on AMX CPUs vLLM's SGL path would fail there (issue 21).
VLLM_INT8_EXACT_FP32, _ = vllm_cpu_int8_path(False, True, torch.float32)
AUTO_INT8 = (INT8[0], "CPUInt8ScaledMMLinearKernel" if VLLM_INT8_EXACT_FP32 else INT8[1])


@dataclass(frozen=True)
class CtCase:
    scheme: str  # llmcompressor_oneshot.SCHEMES key
    quant_type: str  # the equivalent ModelSlim type (comparison rules; MoE scheme)
    linear: tuple[str, str]  # vLLM scheme, our kernel
    dtype: str = "float32"
    moe: bool = False
    kernels: str = "always"  # VLLM_MODELSLIM_CT_KERNELS

    @property
    def id(self) -> str:
        return "-".join([*(["moe"] if self.moe else []), self.scheme, self.dtype, self.kernels])


# Our adapters everywhere ("always"), plus the default ("auto") selection twice
# (MoE W4A16 experts run there); few bf16 cases, to keep CI short.
CASES = [
    CtCase("w8a8_dynamic", "W8A8_DYNAMIC", INT8),
    CtCase("w8a8_static", "W8A8", INT8),
    CtCase("w4a16", "W4A16", WNA16),
    CtCase("w4a16", "W4A16", WNA16, "bfloat16"),
    CtCase("w4a16_channel", "W4A16", WNA16),
    CtCase("w8a16", "W8A16", WNA16),
    CtCase("w8a8_dynamic", "W8A8_DYNAMIC", INT8, moe=True),
    CtCase("w8a8_dynamic", "W8A8_DYNAMIC", AUTO_INT8, kernels="auto"),
    CtCase("w4a16", "W4A16", WNA16, "bfloat16", moe=True, kernels="auto"),
]


@pytest.fixture(scope="module", params=CASES, ids=[c.id for c in CASES])
def engine(request, llmcompressor_checkpoint):
    case: CtCase = request.param
    folder = llmcompressor_checkpoint(case.scheme, moe=case.moe)
    previous = os.environ.get(KERNELS_ENV)
    os.environ[KERNELS_ENV] = case.kernels  # read when each layer picks its kernel
    try:
        llm = make_llm(folder, quantization=None, dtype=case.dtype)
        yield case, folder, llm
        close_llm(llm)
    finally:
        if previous is None:
            os.environ.pop(KERNELS_ENV, None)
        else:
            os.environ[KERNELS_ENV] = previous


def describe_layers(model: torch.nn.Module) -> dict[str, tuple[str, ...]]:
    from vllm.model_executor.layers.fused_moe import RoutedExperts
    from vllm.model_executor.layers.linear import LinearBase

    table: dict[str, tuple[str, ...]] = {}
    for name, module in model.named_modules():
        if isinstance(module, LinearBase):
            scheme = getattr(module, "scheme", None)  # vLLM's compressed-tensors method keeps it on the layer
            kernel = getattr(scheme, "kernel", None)
            table[name] = (type(module.quant_method).__name__, type(scheme).__name__, type(kernel).__name__)
        elif isinstance(module, RoutedExperts):
            method = module.quant_method
            experts = module.modelslim_local_experts
            quant_type = getattr(getattr(method, "scheme", None), "quant_type", "")
            table[module.layer_name] = (type(method).__name__, quant_type, str(experts))
    return table


def test_detected_without_flag_and_runs_our_kernels(engine):
    case, folder, llm = engine
    (table,) = llm.apply_model(describe_layers)
    layers = layer_count(folder)
    linears = {n: e for n, e in table.items() if not n.endswith(("lm_head", "mlp.gate", "mlp.experts"))}
    assert len(linears) == layers * (2 if case.moe else 4)  # qkv, o (, gate_up, down) per layer
    for name, entry in linears.items():
        assert entry == ("CompressedTensorsLinearMethod", *case.linear), name
    experts = {n: e for n, e in table.items() if n.endswith("mlp.experts")}
    if case.moe:
        assert sorted(experts) == [f"model.layers.{i}.mlp.experts" for i in range(layers)]
        for name, entry in experts.items():
            assert entry == ("ModelSlimFusedMoEMethod", case.quant_type, "8"), name
        routers = {n: e for n, e in table.items() if n.endswith("mlp.gate")}
        assert all(e[0] == "UnquantizedLinearMethod" for e in routers.values()), routers
    else:
        assert not experts


def test_greedy_tokens_match_reference(engine, demo_model):
    case, folder, llm = engine
    reference = reference_for(folder)
    layers = layer_count(folder)
    assert len(reference.quantized_layers) == layers * (4 if case.moe else 7)  # q, k, v, o (, gate, up, down)
    if case.moe:
        assert all(labels == {"compressed-tensors group_0"} for labels in reference.expert_layers.values())
        assert len(reference.expert_layers) == layers
    compare_with_reference(llm, reference, prompt_sequences(demo_model), case.dtype, case.quant_type, case.id)


def test_top1_agreement_with_unquantized_model(engine, demo_model, moe_model):
    case, _, llm = engine
    float_model = moe_model if case.moe else demo_model
    share = top1_agreement(llm, reference_for(float_model), evaluation_sequences(demo_model))
    print(f"\nct-{case.id}: top-1 agreement with the unquantized model {share:.1%}")
    assert share >= TOP1_FLOOR.get(case.quant_type, TOP1_FLOOR["default"])
