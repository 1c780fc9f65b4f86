"""Live migration (partitions/datacenter/migration.py): the modelled downtime of a 4 GiB VM with a
5 % writable working set over a 10 Gbit/s link (issue 13's goal: at most 50 ms), pre-copy against
post-copy in total time and bytes, and what simulating the 4 GiB pre-copy costs on this machine.

The VM's guest (`writer` below) stores a counter into each page of 5 % of its memory (52,428 of
1,048,576 pages at 4 GiB) in turn, 16 pages per 320 us of computation, so it rewrites its whole
working set about once a simulated second (~200 MB/s, a sixth of the link). (The memory-counter
workload cannot: it takes its pages from the guest kernel's ring allocator, 16 MiB at most.) The modelled figures
are simulated time (they are the same on any machine); the wall and CPU figures are this machine's,
beside a baseline from the same run: the same VM simulated over the same span without a move.
"""
from __future__ import annotations

import time

from bench.timing import Figure, Goal

#: Issue 13's target for pre-copy's blackout.
GOAL_DOWNTIME = Goal("<=", 50.0, "value", "live migration downtime <= 50 ms (4 GiB VM, 5 % WWS, 10 Gbit/s)")

GIB = 1 << 30
#: VM memory by size: the tiny run (the smoke test) keeps its shape at 64 MiB.
MEMORY = {"tiny": 64 << 20, "default": 4 * GIB, "long": 4 * GIB}
#: Simulated time before the move (the guest boots and its counter runs through its set).
WARMUP_NS = {"tiny": 50_000_000, "default": 1_500_000_000, "long": 1_500_000_000}
LIMIT_NS = 60_000_000_000   # a migration that takes longer than this (simulated) is reported as failed


#: The writer's pages start here, above what the guest kernel allocates (rings: pages 64..4159).
FIRST_PAGE = 8192


async def writer(ctx, first: int, pages: int, batch: int = 16, batch_ns: int = 320_000) -> None:
    """The bench VM's guest: round r stores r (u64) into pages first .. first + pages - 1, `batch`
    pages per `batch_ns` of computation, then starts the next round. The round is read back from
    the first page, so the count goes on from whatever memory a migration brought."""
    part, size = ctx.partition, 4096
    while True:
        value = (int.from_bytes(part.read(first * size, 8), "little") + 1).to_bytes(8, "little")
        for start in range(first, first + pages, batch):
            for page in range(start, min(start + batch, first + pages)):
                part.write(page * size, value)
            await ctx.compute(batch_ns)


def _config(memory: int) -> str:
    pages = memory // 4096 * 5 // 100
    return f"""
[[host]]
name = "a"
logical_processors = 2
memory = "{2 * memory // (1 << 20) + 512}MiB"

[[host.vm]]
name = "vm"
memory = "{memory // (1 << 20)}MiB"
integration_services = {{ heartbeat = false, shutdown = false, timesync = false, kvp = false, vss = false }}
workload = {{ kind = "python", target = "bench.migration:writer", args = {{ first = {FIRST_PAGE}, pages = {pages} }} }}

[[host]]
name = "b"
logical_processors = 2
memory = "{2 * memory // (1 << 20) + 512}MiB"

[[link]]
hosts = ["a", "b"]
bandwidth = "10Gbit/s"
latency = "50us"
"""


def _migrate(size: str, kind: str | None):
    """Build the datacenter, warm up, move (kind None: no move), run until the move is done.
    Returns (record or None, simulated ns from the move to its end, wall s, CPU s of that part)."""
    import tempfile

    from partitions.config import loads
    from partitions.datacenter import Datacenter
    with tempfile.TemporaryDirectory() as work:
        dc = Datacenter(loads(_config(MEMORY[size])), seed=1, workdir=work)
        try:
            dc.run(WARMUP_NS[size])
            wall, cpu = time.perf_counter(), time.process_time()
            record = dc.move("vm", to="b", kind=kind) if kind is not None else None
            step = 10_000_000
            # Until the move has ended and the guest's devices are back on the target.
            while record is not None and (record.outcome == "running" or (
                    record.outcome == "completed" and record.devices_ns is None)) \
                    and dc.now < WARMUP_NS[size] + LIMIT_NS:
                dc.run(dc.now + step)
            return record, dc.now - WARMUP_NS[size], time.perf_counter() - wall, time.process_time() - cpu
        finally:
            dc.close()


def _baseline(size: str, span_ns: int) -> tuple[float, float]:
    """Wall and CPU seconds to simulate the same VM over `span_ns` after the warm-up, no move."""
    import tempfile

    from partitions.config import loads
    from partitions.datacenter import Datacenter
    with tempfile.TemporaryDirectory() as work:
        dc = Datacenter(loads(_config(MEMORY[size])), seed=1, workdir=work)
        try:
            dc.run(WARMUP_NS[size])
            wall, cpu = time.perf_counter(), time.process_time()
            dc.run(WARMUP_NS[size] + span_ns)
            return time.perf_counter() - wall, time.process_time() - cpu
        finally:
            dc.close()


def _ms(ns: int | None) -> str:
    return "-" if ns is None else f"{ns / 1e6:.3f} ms"


def run(size: str = "default") -> list[Figure]:
    gib = MEMORY[size] / GIB
    label = f"{gib:g} GiB VM, 5 % WWS, 10 Gbit/s"
    figures = []
    live, live_span, live_wall, live_cpu = _migrate(size, "live")
    post, _, _, _ = _migrate(size, "post-copy")
    for rec in (live, post):
        if rec.outcome != "completed":
            raise RuntimeError(f"{rec.kind} migration of the bench VM ended {rec.outcome}: {rec.reason}")
    s = live.summary()
    figures.append(Figure(f"pre-copy downtime ({label})", s["downtime_ns"] / 1e6, "ms simulated", goal=GOAL_DOWNTIME,
                          note=f"freeze to running on the target: the source's stop {_ms(s['blackout_stop_ns'])}, "
                               f"the target's start {_ms(s['blackout_start_ns'])}, the rest the link; "
                               f"{s['rounds']} rounds, pages per round {s['pages_per_round']}, stop rule: "
                               f"{s['stop_rule']}"))
    figures.append(Figure(f"pre-copy devices away ({label})", s["devices_away_ns"] / 1e6, "ms simulated",
                          note=f"freeze to the guest's devices all open again: its VMBus reconnect takes "
                               f"{_ms(s['reconnect_ns'])} after the resume"))
    p = post.summary()
    figures.append(Figure(f"post-copy downtime ({label})", p["downtime_ns"] / 1e6, "ms simulated",
                          note=f"stop {_ms(p['blackout_stop_ns'])}, start {_ms(p['blackout_start_ns'])}; "
                               f"{p['fetches']} pages fetched on demand, {p['fetch_wait_ns'] / 1e6:.1f} ms of VP "
                               f"stalls charged, their pages {p['fetch_late_ns'] / 1e6:.1f} ms later than charged"))
    figures.append(Figure(f"post-copy devices away ({label})", p["devices_away_ns"] / 1e6, "ms simulated",
                          note=f"reconnect {_ms(p['reconnect_ns'])} after the resume (the guest's VP waits for "
                               f"the pages it touches first)"))
    pre_total = Figure(f"pre-copy total time ({label})", s["total_ns"] / 1e6, "ms simulated",
                       note=f"{s['bytes'] / 1e6:.1f} MB on the link, both ways")
    figures.append(pre_total)
    figures.append(Figure(f"post-copy total time ({label})", p["total_ns"] / 1e6, "ms simulated", pre_total.name,
                          p["total_ns"] / s["total_ns"], note=f"{p['bytes'] / 1e6:.1f} MB on the link, both ways"))
    pre_bytes = Figure(f"pre-copy bytes ({label})", s["bytes"] / 1e6, "MB")
    figures.append(pre_bytes)
    figures.append(Figure(f"post-copy bytes ({label})", p["bytes"] / 1e6, "MB", pre_bytes.name, p["bytes"] / s["bytes"]))
    base_wall, base_cpu = _baseline(size, live_span)
    base = f"simulating the VM for the same {live_span / 1e9:.2f} s without a move"
    figures.append(Figure(base, base_cpu, "CPU s", note=f"{base_wall:.2f} s wall"))
    figures.append(Figure(f"simulating the {gib:g} GiB pre-copy migration", live_cpu, "CPU s", base,
                          live_cpu / base_cpu if base_cpu else None,
                          note=f"{live_wall:.2f} s wall for {live_span / 1e9:.2f} s simulated"))
    return figures
