"""Fixtures of the management service's tests: an engine over a small host (paused, or running
as fast as it can), stopped in the finaliser so that no simulation thread outlives its test."""
from __future__ import annotations

import pytest

#: Two small VMs on two LPs: "steady" burns half a VP, "idle" idles; no disks, no switch.
SMALL_HOST = """
[host]
logical_processors = 2
memory = "1GiB"

[[vm]]
name = "steady"
memory = "64MiB"
workload = { kind = "cpu-burn", duty = 0.5 }

[[vm]]
name = "idle"
memory = "64MiB"
"""


def small_config(tmp_path, text: str = SMALL_HOST):
    from partitions.config import loads
    return loads(text, base_dir=tmp_path)


@pytest.fixture
def make_engine(tmp_path):
    """make_engine(text=SMALL_HOST, **Engine options) -> a started Engine (state in tmp_path/state);
    every engine made is stopped at the test's end."""
    from partitions.service.engine import Engine
    made = []

    def make(text: str = SMALL_HOST, *, workdir=None, **options):
        options.setdefault("speed", None)
        engine = Engine(small_config(tmp_path, text), workdir=workdir or tmp_path / "state", **options)
        engine.start()
        made.append(engine)
        return engine
    yield make
    for engine in made:
        engine.stop()


@pytest.fixture
def engine(make_engine):
    """A paused engine over SMALL_HOST at time 0 (its VMs started)."""
    return make_engine(paused=True)
