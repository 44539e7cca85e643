import json

import pytest

from vllm_modelslim.format import (
    AmbiguousDescriptionError,
    DescriptionFormatError,
    DescriptionNotFoundError,
    QuantDescription,
    find_description_file,
    load_description,
)


def write(folder, name, text):
    path = folder / name
    path.write_text(text)
    return path


GOOD = {"version": "1.0.0", "model.layers.0.mlp.down_proj.weight": "W8A8_DYNAMIC", "lm_head.weight": "FLOAT"}


def test_loads_new_pipeline_name(tmp_path):
    write(tmp_path, "quant_model_description.json", json.dumps(GOOD))
    desc = load_description(tmp_path)
    assert desc.quant_type("model.layers.0.mlp.down_proj.weight") == "W8A8_DYNAMIC"
    assert desc.settings["version"] == "1.0.0"
    assert "version" not in desc.entries
    assert desc.source.endswith("quant_model_description.json")


def test_loads_old_pipeline_name(tmp_path):
    write(tmp_path, "quant_model_description_w8a8.json", json.dumps(GOOD))
    assert find_description_file(tmp_path).name == "quant_model_description_w8a8.json"


def test_missing_file_lists_json_files(tmp_path):
    write(tmp_path, "config.json", "{}")
    with pytest.raises(DescriptionNotFoundError, match=r"config\.json") as info:
        load_description(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_not_a_folder(tmp_path):
    with pytest.raises(DescriptionNotFoundError, match="not a local folder"):
        load_description(tmp_path / "nope")


def test_several_candidates_are_listed(tmp_path):
    write(tmp_path, "quant_model_description.json", json.dumps(GOOD))
    write(tmp_path, "quant_model_description_w8a8.json", json.dumps(GOOD))
    with pytest.raises(AmbiguousDescriptionError) as info:
        load_description(tmp_path)
    assert "quant_model_description.json" in str(info.value)
    assert "quant_model_description_w8a8.json" in str(info.value)


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("{not json", r"not valid JSON \(line 1"),
        ("[1, 2]", "expected a JSON object"),
        ('"W8A8"', "expected a JSON object"),
        ('{"a.weight": 3}', "must map to a quant type string"),
        ('{"a.weight": ""}', "must map to a quant type string"),
        ('{"version": "1"}', "no per-tensor entries"),
        ('{"a.weight": "W8A16", "a.weight": "FLOAT"}', "appears more than once"),
        ("[" * 100000 + "]" * 100000, "nesting is too deep"),
    ],
)
def test_malformed_files_name_the_file(tmp_path, text, pattern):
    path = write(tmp_path, "quant_model_description.json", text)
    with pytest.raises(DescriptionFormatError, match=pattern) as info:
        load_description(tmp_path)
    assert str(path) in str(info.value)


def test_non_utf8_file(tmp_path):
    (tmp_path / "quant_model_description.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(DescriptionFormatError, match="cannot read"):
        load_description(tmp_path)


def test_group_size_validation():
    desc = QuantDescription.from_mapping({"a.weight": "W8A16", "group_size": -1})
    with pytest.raises(DescriptionFormatError, match="group_size"):
        _ = desc.group_size
    assert QuantDescription.from_mapping({"a.weight": "W8A16", "group_size": 64}).group_size == 64


def test_weight_entries_and_types():
    desc = QuantDescription.from_mapping(
        {"a.weight": "W8A16", "a.weight_scale": "W8A16", "b.weight": "FLOAT", "metadata": {}}
    )
    assert dict(desc.weight_entries()) == {"a": "W8A16", "b": "FLOAT"}
    assert desc.quant_types() == {"W8A16", "FLOAT"}
    assert desc.version == "0"
