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


def test_every_moe_scheme_accepts_tensor_parallelism():
    # Static experts too: their w2 quant_bias enters on MoE rank 0 only (schemes/linear/w8a8.rank_quant_bias).
    for quant_type in ("W8A8_DYNAMIC", "W8A8", "W8A8_MIX", "W8A16", "W4A16", "W4A8_DYNAMIC"):
        _moe_scheme(quant_type).check_layer(tp_size=2)
