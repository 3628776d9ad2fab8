"""The timing helper of the benchmarks: the median of a few runs after a warm-up."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_time(fn: Callable[[], float], repeats: int) -> tuple[float, float]:
    """``(median seconds, value)`` of ``repeats`` runs of ``fn`` after one warm-up run."""
    value = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value
