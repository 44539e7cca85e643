"""CUDA-graph capturability check shared by the ``gpu`` tests."""

from collections.abc import Callable

import torch


def graph_replay_matches_eager(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> None:
    """Capture ``fn`` on a static copy of ``x`` and check that replays equal eager calls bit for bit.

    Two warm-up calls run on a side stream (as vLLM does before capturing); the
    graph is then replayed on new input (``x·0.5``) and on ``x`` again. Capture
    itself fails when ``fn`` copies from the host, calls ``.item()`` or syncs.
    """
    static_x = x.clone()
    eager = fn(static_x).clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn(static_x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(static_x)
    static_x.copy_(x * 0.5)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, fn(x * 0.5), rtol=0, atol=0)
    static_x.copy_(x)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, eager, rtol=0, atol=0)
