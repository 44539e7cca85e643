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
