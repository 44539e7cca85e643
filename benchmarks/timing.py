"""Timing helper shared by the micro-benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_ms(
    fn: Callable[[], object],
    min_seconds: float = 0.5,
    min_runs: int = 5,
    clock: Callable[[], float] | None = None,
) -> float:
    """Median wall-clock milliseconds per call; with ``clock`` (e.g. ``time.thread_time``) the
    minimum of that clock over the runs instead (CPU time: steady on a shared host)."""
    fn()
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_seconds:
        t = time.perf_counter() if clock is None else clock()
        fn()
        times.append((time.perf_counter() if clock is None else clock()) - t)
    return (statistics.median(times) if clock is None else min(times)) * 1e3
