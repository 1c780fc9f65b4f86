"""The dirty log (native/dirty.c): what tracking adds to a guest's stores, and how fast the parent
reads and clears the log.

Stores: `hv_partition_write` (the binding's call behind `Partition.write`, so the figure is the
core's path and one cffi crossing, not Python's wrapper) of 8 bytes and of 64 KiB (16 pages),
into a 64 MiB child, with tracking on against the same store into a second child of the same host
with tracking off, measured in the same run: the ratio is what tracking costs (one bit set per page
written). Read: `DirtyLog.take` over the child's 16,384 pages with 5 % of them written before each
take (HvCallGetGpaPagesAccessStates with clear dirty, 256 pages per invocation), in pages per
second.
"""
from __future__ import annotations

import time

from bench.timing import Figure, Goal, stmt_rate
from hypervisor import Host, _binding
from hypervisor.abi import PAGE_SIZE

MIN_SECONDS = {"tiny": 0.001, "default": 0.2, "long": 1.0}
TAKES = {"tiny": 1, "default": 20, "long": 100}
PAGES = 16_384
#: Tracking costs one bit set per page written: within 10 % of the same store untracked.
GOAL_STORE = Goal(">=", 0.9, "ratio", "tracked store within 10% of untracked (rate >= 0.9x)")


def _child(host: Host):
    from partitions.worker import VmSpec, VmWorker
    return VmWorker(host, VmSpec(f"c{len(host.partitions())}", memory=f"{PAGES * PAGE_SIZE // (1 << 20)}MiB")).build()


def run(size: str = "default") -> list[Figure]:
    min_s = MIN_SECONDS[size]
    host = Host(logical_processors=1, memory="256MiB", seed=1)
    tracked, untracked = _child(host), _child(host)
    log = host.dirty_log(tracked)
    log.start()
    ns = {"write": _binding.hv_partition_write, "h": host._h, "on": tracked.id, "off": untracked.id,
          "small": b"x" * 8, "big": b"y" * (16 * PAGE_SIZE), "g": 123 * PAGE_SIZE}
    figures = []
    for label, data in (("8-byte", "small"), ("64 KiB", "big")):
        # Alternate the two sides twice and keep each side's best, so that load on a shared
        # machine hits both alike.
        on = max(stmt_rate(f"write(h, on, g, {data})", ns, min_seconds=min_s) for _ in range(2))
        off = max(stmt_rate(f"write(h, off, g, {data})", ns, min_seconds=min_s) for _ in range(2))
        base = f"guest {label} store, tracking off"
        figures.append(Figure(base, off, "stores/s"))
        figures.append(Figure(f"guest {label} store, tracking on", on, "stores/s", base, on / off, GOAL_STORE))
    dirty = [(i * 7919 % PAGES) * PAGE_SIZE for i in range(PAGES // 20)]
    spent, found = 0.0, 0
    for _ in range(TAKES[size]):
        for gpa in dirty:
            tracked.write(gpa, b"d")
        start = time.process_time()
        found = len(log.take(0, PAGES))
        spent += time.process_time() - start
    figures.append(Figure(f"dirty log read and clear ({PAGES} pages, {found} dirty)", PAGES * TAKES[size] / spent,
                          "pages/CPU s", note=f"{spent / TAKES[size] * 1e3:.2f} ms CPU per take of the whole child"))
    return figures
