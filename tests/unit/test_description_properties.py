"""Property-based tests of the description parser (hypothesis): any input parses or fails cleanly."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vllm_modelslim.format import DescriptionFormatError, QuantDescription
from vllm_modelslim.format.description import MAX_KEY_CHARS, parse_description_file

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
tensor_names = st.from_regex(r"[a-z_]{1,8}(\.[a-z0-9_]{1,8}){1,4}", fullmatch=True)
quant_types = st.sampled_from(["W8A8", "W8A8_DYNAMIC", "FLOAT", "W3A5"]) | st.text(min_size=1, max_size=12)
setting_names = st.from_regex(r"[a-z_]{1,16}", fullmatch=True)


def write(tmp_path, data: bytes):
    path = tmp_path / "quant_model_description.json"
    path.write_bytes(data)
    return path


@SETTINGS
@given(
    entries=st.dictionaries(tensor_names, quant_types, min_size=1),
    extra=st.dictionaries(setting_names, json_values),
)
def test_valid_descriptions_round_trip(tmp_path, entries, extra):
    path = write(tmp_path, json.dumps({**extra, **entries}).encode())
    description = parse_description_file(path)
    assert dict(description.entries) == entries
    assert dict(description.settings) == extra
    assert description.source == str(path)


@SETTINGS
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_parse_or_fail_with_a_format_error(tmp_path, data):
    path = write(tmp_path, data)
    try:
        parse_description_file(path)
    except DescriptionFormatError as exc:
        assert str(path) in str(exc)


@SETTINGS
@given(value=json_values)
def test_arbitrary_json_parses_or_fails_with_a_format_error(tmp_path, value):
    path = write(tmp_path, json.dumps(value).encode())
    try:
        description = parse_description_file(path)
    except DescriptionFormatError as exc:
        assert str(path) in str(exc)
        return
    # Accepted only as an object with at least one dotted key mapping to a non-empty string.
    assert isinstance(value, dict)
    assert description.entries and all(isinstance(v, str) and v for v in description.entries.values())


@SETTINGS
@given(entries=st.dictionaries(tensor_names, quant_types, min_size=1), data=st.data())
def test_a_duplicated_key_is_always_rejected(tmp_path, entries, data):
    key = data.draw(st.sampled_from(sorted(entries)))
    text = json.dumps(entries)
    text = text[:-1] + f", {json.dumps(key)}: {json.dumps(entries[key])}}}"
    path = write(tmp_path, text.encode())
    try:
        parse_description_file(path)
    except DescriptionFormatError as exc:
        assert "more than once" in str(exc)
    else:
        raise AssertionError("a duplicated key was accepted")


@SETTINGS
@given(depth=st.integers(min_value=1, max_value=50_000))
def test_nesting_of_any_depth_fails_cleanly_or_parses(tmp_path, depth):
    text = '{"metadata": ' + "[" * depth + "]" * depth + ', "a.weight": "FLOAT"}'
    path = write(tmp_path, text.encode())
    try:
        description = parse_description_file(path)
    except DescriptionFormatError as exc:
        assert "too deep" in str(exc)
    else:
        assert description.entries == {"a.weight": "FLOAT"}


@SETTINGS
@given(length=st.integers(min_value=1, max_value=3 * MAX_KEY_CHARS))
def test_long_keys_are_rejected_above_the_limit_only(length):
    key = "a." + "k" * length
    raw = {key: "W8A8", "b.weight": "FLOAT"}
    if len(key) > MAX_KEY_CHARS:
        try:
            QuantDescription.from_mapping(raw, source="desc.json")
        except DescriptionFormatError as exc:
            assert len(str(exc)) < 400 and "desc.json" in str(exc)
        else:
            raise AssertionError("an over-long key was accepted")
    else:
        assert QuantDescription.from_mapping(raw).entries[key] == "W8A8"
