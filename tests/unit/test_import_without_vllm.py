"""Layering: only ``vllm_modelslim.plugin`` imports vLLM; everything below imports with vLLM absent."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

VLLM_FREE_PACKAGES = ("format", "schemes", "kernels", "reference", "inspection")

_SCRIPT = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys

    sys.modules["vllm"] = None  # any "import vllm..." now raises ImportError
    import vllm_modelslim

    results = {}
    for package in PACKAGES:
        root = importlib.import_module(f"vllm_modelslim.{package}")
        names = [root.__name__] + [
            m.name for m in pkgutil.walk_packages(root.__path__, prefix=root.__name__ + ".")
        ]
        for name in names:
            try:
                importlib.import_module(name)
                results[name] = None
            except Exception as exc:
                results[name] = f"{type(exc).__name__}: {exc}"
    try:
        importlib.import_module("vllm_modelslim.plugin.quant_config")
        results["vllm_modelslim.plugin.quant_config"] = None
    except ImportError as exc:
        results["vllm_modelslim.plugin.quant_config"] = f"ImportError: {exc}"
    print(json.dumps(results))
    """
)


def _import_with_vllm_blocked() -> dict[str, str | None]:
    script = f"PACKAGES = {VLLM_FREE_PACKAGES!r}\n" + _SCRIPT
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_module_below_the_plugin_imports_without_vllm():
    results = _import_with_vllm_blocked()
    modules = [name for name in results if not name.startswith("vllm_modelslim.plugin")]
    for package in VLLM_FREE_PACKAGES:
        assert any(name.startswith(f"vllm_modelslim.{package}.") for name in modules), package
    failures = {name: error for name, error in results.items() if error and name in modules}
    assert not failures, failures
    # and the check itself bites: the vLLM wing does need vLLM
    assert "ImportError" in (results["vllm_modelslim.plugin.quant_config"] or "")
