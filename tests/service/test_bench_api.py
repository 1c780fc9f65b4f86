"""bench/api.py's stretches: faults are thrown in only where a phase asks for them."""
from __future__ import annotations

import asyncio

import bench.api as bench_api


def test_only_the_phase_with_faults_gets_fault_rounds(server, monkeypatch):
    rounds = []

    async def fault_round(port, load):
        rounds.append(port)
    monkeypatch.setattr(bench_api, "_fault_round", fault_round)
    assert [bench_api._fault_every(faults, "tiny") for *_, faults, _ in bench_api.PHASES] == \
        [None, None, None, bench_api.FAULT_EVERY["tiny"]]
    load = asyncio.run(bench_api._measure(server.port, ["steady", "idle"], 0.2, None,
                                          bench_api._fault_every(False, "tiny"), 1))
    assert load.latencies and rounds == []
    asyncio.run(bench_api._measure(server.port, ["steady", "idle"], 0.2, None, bench_api._fault_every(True, "tiny"), 1))
    assert rounds
