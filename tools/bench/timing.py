"""Shared timing helper of the PyTorch peer scripts."""

import statistics
import time


def median_time(fn, warmup, runs):
    """Median wall time of `runs` calls of `fn` after `warmup` untimed calls, in seconds."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)
