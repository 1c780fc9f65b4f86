"""The one timing loop every benchmark uses: operations per wall second, best of three runs."""
from __future__ import annotations

import time


def rate(fn, per_call: int = 1, *, min_seconds: float = 0.1) -> float:
    """Operations per second of `fn` (each call does `per_call` of them): warm up once, then the
    best of three runs of at least `min_seconds` each."""
    fn()
    best = 0.0
    for _ in range(3):
        n, start = 0, time.perf_counter()
        while True:
            fn()
            n += per_call
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        best = max(best, n / elapsed)
    return best
