"""The timing harness every benchmark uses: operations per wall second of a loop timed as a
whole (the clock is read before and after the loop, never per call), and the figures a benchmark
reports, each with the goal it is held to."""
from __future__ import annotations

import itertools
import os
import time
import timeit
from dataclasses import dataclass, field

#: Benchmark sizes: "tiny" for the smoke test (structure only), "default" for `make bench`
#: (short: the whole run stays within minutes on a shared 2-CPU machine), "long" for figures
#: with less noise.
SIZES = ("tiny", "default", "long")


def _loop(fn, n: int) -> float:
    it = itertools.repeat(None, n)
    start = time.perf_counter()
    for _ in it:
        fn()
    return time.perf_counter() - start


def _calibrated(timer, min_seconds: float) -> tuple[int, float]:
    """(n, seconds) of the first loop of n iterations that lasts at least `min_seconds`; n grows
    from 1 (a loop once warmed up: the first run is thrown away)."""
    timer(1)
    n = 1
    while True:
        seconds = timer(n)
        if seconds >= min_seconds:
            return n, seconds
        n = n * 10 if seconds < min_seconds / 20 else int(n * 1.2 * min_seconds / max(seconds, 1e-9)) + 1


def rate(fn, per_call: int = 1, *, min_seconds: float = 0.1) -> float:
    """Operations per second of `fn` (each call does `per_call` of them), from one loop of as
    many calls as take at least `min_seconds`."""
    n, seconds = _calibrated(lambda k: _loop(fn, k), min_seconds)
    return n * per_call / seconds


def stmt_rate(stmt: str, namespace: dict, *, min_seconds: float = 0.1) -> float:
    """Executions per second of the statement `stmt` (with names from `namespace`), compiled
    inline into the timing loop as timeit does: no function call per iteration is added to
    what is measured, so a fast call and its baseline are compared as written."""
    timer = timeit.Timer(stmt, globals=namespace)
    n, seconds = _calibrated(timer.timeit, min_seconds)
    return n / seconds


def wall(fn) -> tuple[float, object]:
    """(wall seconds, result) of one call of `fn`."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def scratch_dir() -> tuple[str, str]:
    """(directory for benchmark files, what it is): a tmpfs (/dev/shm) when there is one, so
    that disk figures measure hvsim rather than the machine's disk; else the system's
    temporary directory, named in the output."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        return shm, "tmpfs /dev/shm"
    import tempfile
    tmp = tempfile.gettempdir()
    return tmp, f"{tmp} (no /dev/shm here: a real file system, figures include its cost)"


@dataclass(frozen=True)
class Goal:
    """A target from issue 12's list: `op` ">=" or "<=", on the figure's "value" or its
    "ratio" to the baseline, and how the target reads in the issue. `op` "within": the value or
    ratio is within `target` of 1 (a ratio to a published figure, either way)."""

    op: str
    target: float
    on: str
    text: str

    def met(self, value: float | None, ratio: float | None) -> bool | None:
        x = value if self.on == "value" else ratio
        if x is None:
            return None
        if self.op == "within":
            return abs(x - 1) <= self.target + 1e-12   # 1.1 is within 10 % of 1, floating point or not
        return x >= self.target if self.op == ">=" else x <= self.target


@dataclass
class Figure:
    """One measured figure of one benchmark run. `ratio` is the value over `baseline`'s value
    measured in the same run (for rates: how many times faster; for costs, see the unit)."""

    name: str
    value: float | None
    unit: str
    baseline: str | None = None
    ratio: float | None = None
    goal: Goal | None = None
    note: str = ""
    error: str | None = None
    extra: dict = field(default_factory=dict)


def failed(name: str, error: str, goal: Goal | None = None, note: str = "") -> Figure:
    """A figure that could not be measured, and why."""
    return Figure(name, None, "", goal=goal, note=note, error=error)
