import pytest

from vllm_modelslim.schemes import LinearScheme, get_scheme_class, register_scheme, registered_quant_types


def test_foundation_linear_schemes_are_registered():
    for quant_type in ("W8A8", "W8A8_DYNAMIC", "W8A16"):
        cls = get_scheme_class(quant_type, "linear")
        assert cls is not None and issubclass(cls, LinearScheme)
        assert cls.quant_type == quant_type
    assert {"W8A8", "W8A8_DYNAMIC", "W8A16"} <= set(registered_quant_types("linear"))


def test_unknown_lookups_return_none():
    assert get_scheme_class("NONEXISTENT", "linear") is None
    assert get_scheme_class("W8A8_DYNAMIC", "nonexistent") is None


def test_duplicate_registration_is_an_error():
    with pytest.raises(ValueError, match="already registered for W8A8_DYNAMIC/linear"):

        @register_scheme("W8A8_DYNAMIC", "linear")
        class Again:
            pass


def test_unknown_layer_type_is_an_error():
    with pytest.raises(ValueError, match="unknown layer type"):
        register_scheme("X", "embedding")


def _moe_scheme(quant_type: str):
    from vllm_modelslim.format.description import QuantDescription
    from vllm_modelslim.schemes.moe import MoEContext

    prefix = "model.layers.0.mlp.experts"
    entries: dict = {f"{prefix}.0.{p}.weight": quant_type for p in ("gate_proj", "up_proj", "down_proj")}
    entries["group_size"] = 64  # W4A16 needs one without checkpoint headers
    context = MoEContext(
        prefix=prefix,
        quant_type=quant_type,
        checkpoint_prefix=prefix,
        projections=("gate_proj", "up_proj", "down_proj"),
        num_experts=1,
        description=QuantDescription.from_mapping(entries, "quant_model_description.json"),
    )
    return get_scheme_class(quant_type, "moe")(context)


def test_moe_schemes_name_their_projection_scheme():
    for quant_type in ("W8A8_DYNAMIC", "W8A8", "W8A8_MIX", "W8A16", "W4A16", "W4A8_DYNAMIC"):
        scheme = _moe_scheme(quant_type)
        assert scheme.projection_scheme is get_scheme_class(quant_type, "linear")
        assert scheme.w2.context.row_parallel and not scheme.w13.context.row_parallel
    assert get_scheme_class("W4A4_DYNAMIC", "moe") is None


@pytest.mark.parametrize("quant_type", ["W8A8", "W8A8_MIX"])
def test_static_activation_experts_refuse_tensor_parallelism(quant_type):
    from vllm_modelslim.format import UnknownQuantTypeError

    scheme = _moe_scheme(quant_type)
    scheme.check_layer(tp_size=1)
    with pytest.raises(UnknownQuantTypeError, match="without tensor parallelism") as info:
        scheme.check_layer(tp_size=2)
    assert "model.layers.0.mlp.experts" in str(info.value)
    assert "quant_model_description.json" in str(info.value)
    _moe_scheme("W8A8_DYNAMIC").check_layer(tp_size=2)  # dynamic experts shard as vLLM does
