"""``vllm serve <msmodelslim checkpoint> --quantization ascend``: the real CLI and server.

The server runs vLLM's default multiprocess engine, so the plugin is loaded
through the ``vllm.general_plugins`` entry point in every process vLLM spawns.
Its greedy completions must equal those of the in-process engine.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from vllm_modelslim.examples.vllm_runner import close_llm, make_llm

pytestmark = pytest.mark.engine

PROMPTS = ["Return the number of", "The file object", "If the path is"]
MAX_TOKENS = 16
STARTUP_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(quantized, tmp_path_factory):
    folder = quantized("w8a8_dynamic")
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve") / "server.log"
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    vllm = shutil.which("vllm") or str(Path(sys.executable).with_name("vllm"))
    command = [
        vllm, "serve", str(folder),
        "--quantization", "ascend",
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "bfloat16", "--enforce-eager",
        "--max-model-len", "512", "--kv-cache-memory-bytes", str(256 * 2**20),
        "--served-model-name", "demo",
    ]  # fmt: skip
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"vllm serve exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if requests.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"vllm serve not healthy after {STARTUP_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}"
                )
            time.sleep(1)
        yield base, folder, log_path
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def test_server_completions_equal_offline_engine(server):
    base, folder, log_path = server
    served = []
    for prompt in PROMPTS:
        response = requests.post(
            f"{base}/v1/completions",
            json={"model": "demo", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0.0},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        served.append(response.json()["choices"][0]["text"])

    from vllm import SamplingParams

    llm = make_llm(folder, "ascend")
    outputs = llm.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS), use_tqdm=False)
    offline = [o.outputs[0].text for o in outputs]
    close_llm(llm)
    print("\n" + "\n".join(f"{p!r} -> {t!r}" for p, t in zip(PROMPTS, served, strict=True)))
    assert served == offline
    assert "quantization=ascend" in log_path.read_text()
