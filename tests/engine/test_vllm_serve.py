"""``vllm serve <msmodelslim checkpoint> --quantization ascend``: the real CLI and server, under load.

The server runs vLLM's default multiprocess engine, so the plugin is loaded
through the ``vllm.general_plugins`` entry point in every process vLLM spawns.
Its greedy completions must equal those of the in-process engine, and 32
concurrent requests × 3 rounds must all succeed with the same text as the same
prompt sent alone. Run alone with ``pytest -m serve -s`` (``-s`` prints
requests/s and latency percentiles).

Both engines run float32 and the offline one takes one prompt at a time: a
prompt's bf16 result may depend on the batch it runs in (AMX GEMMs round
differently with the row count, and on an AMX CPU the same prompt alone and in
a batch was seen to give different bf16 greedy tokens), while concurrent
requests are batched as they arrive. float32 rounding noise (~1e-7 relative)
changes a greedy token only by flipping an activation's int8 rounding next to
a near-tie of the model (rare; see ``NEAR_TIE_NATS`` in ``e2e_compare.py``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from vllm_modelslim.examples.tiny_qwen3 import held_out_texts
from vllm_modelslim.examples.vllm_runner import close_llm, make_llm

pytestmark = [pytest.mark.engine, pytest.mark.serve]

MAX_TOKENS = 16
DTYPE = "float32"  # batch composition must not change greedy tokens (module docstring)
STARTUP_TIMEOUT_S = 300
REQUEST_TIMEOUT_S = 120
CONCURRENCY = 32
ROUNDS = 3


def load_prompts() -> list[str]:
    """32 prompts: four 6-word windows spread over each of 8 held-out texts."""
    prompts = []
    for text in held_out_texts(8):
        words = text.split()
        step = (len(words) - 6) // 4
        prompts += [" ".join(words[i * step : i * step + 6]) for i in range(4)]
    assert len(prompts) == CONCURRENCY, len(prompts)
    return prompts


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    base: str
    folder: Path
    log_path: Path
    process: subprocess.Popen

    def complete(self, prompt: str) -> tuple[str, float, int]:
        """Greedy completion of ``prompt``: text, latency in seconds, generated tokens."""
        start = time.perf_counter()
        response = requests.post(
            f"{self.base}/v1/completions",
            json={"model": "served", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0.0},
            timeout=REQUEST_TIMEOUT_S,
        )
        elapsed = time.perf_counter() - start
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:500]}")
        body = response.json()
        return body["choices"][0]["text"], elapsed, body["usage"]["completion_tokens"]

    def stop(self) -> int:
        """SIGINT the server (as Ctrl-C would) and return its exit code; SIGKILL after 60 s."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        return self.process.returncode


def start_server(folder: Path, log_path: Path) -> Server:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    vllm = shutil.which("vllm") or str(Path(sys.executable).with_name("vllm"))
    command = [
        vllm, "serve", str(folder),
        "--quantization", "ascend",
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", DTYPE, "--enforce-eager",
        "--max-model-len", "512", "--kv-cache-memory-bytes", str(256 * 2**20),
        "--served-model-name", "served",
    ]  # fmt: skip
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    server = Server(f"http://127.0.0.1:{port}", folder, log_path, process)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"vllm serve exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if requests.get(f"{server.base}/health", timeout=2).status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            tail = log_path.read_text()[-3000:]
            pytest.fail(f"vllm serve not healthy after {STARTUP_TIMEOUT_S} s:\n{tail}")
        time.sleep(1)


@pytest.fixture(scope="module", params=["w8a8_dynamic", "moe_w8a8_dynamic"])
def server(request, quantized, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("serve") / f"{request.param}.log"
    server = start_server(quantized(request.param), log_path)
    try:
        yield server
    finally:
        server.stop()


def test_server_completions_equal_offline_engine(server):
    prompts = load_prompts()[:4]
    served = [server.complete(prompt)[0] for prompt in prompts]

    from vllm import SamplingParams

    llm = make_llm(server.folder, "ascend", dtype=DTYPE)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
    # one prompt per call, as the server was sent them: the same batches on both sides
    offline = [llm.generate([prompt], params, use_tqdm=False)[0].outputs[0].text for prompt in prompts]
    close_llm(llm)
    print("\n" + "\n".join(f"{p!r} -> {t!r}" for p, t in zip(prompts, served, strict=True)))
    assert served == offline
    assert "quantization=ascend" in server.log_path.read_text()


def test_concurrent_requests_equal_sequential_ones(server):
    prompts = load_prompts()
    sequential = [server.complete(prompt)[0] for prompt in prompts]
    latencies: list[float] = []
    tokens = 0
    failures: list[str] = []
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
        for round_index in range(ROUNDS):
            futures = [pool.submit(server.complete, prompt) for prompt in prompts]
            for index, future in enumerate(futures):
                try:
                    text, latency, generated = future.result(timeout=REQUEST_TIMEOUT_S + 30)
                except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                    failures.append(f"round {round_index} prompt {index}: {type(exc).__name__}: {exc}")
                    continue
                latencies.append(latency)
                tokens += generated
                if text != sequential[index]:
                    failures.append(f"round {round_index} prompt {index}: {text!r} != {sequential[index]!r}")
    elapsed = time.perf_counter() - start
    latencies.sort()
    p50 = latencies[len(latencies) // 2] if latencies else float("nan")
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else float("nan")
    print(
        f"\n{server.folder.name}: {len(latencies)}/{CONCURRENCY * ROUNDS} requests ok in {elapsed:.1f} s = "
        f"{len(latencies) / elapsed:.2f} req/s, {tokens / elapsed:.1f} generated tokens/s; "
        f"latency p50 {p50:.2f} s, p99 {p99:.2f} s"
    )
    assert failures == []


def test_server_shuts_down_cleanly(server):
    assert server.stop() == 0, server.log_path.read_text()[-3000:]
    assert server.process.poll() is not None
