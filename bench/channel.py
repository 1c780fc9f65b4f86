"""One VMBus channel's data plane: packets per wall second through a ring in a child's pages,
seen by the parent through a grant and by the guest through its own view (two mappings of the
same host pages, as on Hyper-V), for 64-byte and 64 KiB payloads.

Paths: the pure-Python ring of the same layout one packet at a time (the reference), the channel
API one packet per call (each send and each receive crosses into the core once), and the core's
batch path (many packets per crossing, written then read back). The baseline, in the same run,
is memcpy in C (hv_bench_memcpy, compiled with the core) of the same bytes, packet by packet, in
one crossing: the least any ring can cost, since each packet is copied into the ring at least
once (and out of it once more: a ring's reader copies every packet out before it looks at it).

Floors, measured in the same run so that a goal missed can be told from the machine: two empty
cffi calls (what one send and one receive cross at the least), the Python work of a batch before
any C runs (the payloads' lengths and one join), and the batch path's C calls alone on a ring of
the same size (no Python at all).
"""
from __future__ import annotations

import array

from bench.timing import Figure, Goal, rate, stmt_rate
from hypervisor import Host, _binding
from hypervisor.grants import own_view
from partitions.worker import VmSpec, VmWorker
from vmbus.channel import ChannelEnd, init_ring_gpadl
from vmbus.ring import IncomingRing, OutgoingRing, packet_size

MIN_SECONDS = {"tiny": 0.001, "default": 0.1, "long": 0.5}
# payload bytes -> packets per round
SIZES = {"tiny": {64: 10, 65536: 2}, "default": {64: 1000, 65536: 15}, "long": {64: 1000, 65536: 15}}

GOALS = {
    (64, "batch"): Goal(">=", 10e6, "value", ">= 10 M packets/s (64 B batched)"),
    (64, "one"): Goal(">=", 1e6, "value", ">= 1 M packets/s (64 B, one per call)"),
    (65536, "batch"): Goal(">=", 0.5, "ratio", ">= 0.5x memcpy (64 KiB batched)"),
}


def _channel(host: Host, child, view_id: int, ring_pages: int):
    """(guest end, host end) of one channel whose rings live in the child's pages."""
    pages = list(range(16, 16 + 2 * ring_pages))
    guest_view = own_view(child, view_id, pages)
    init_ring_gpadl(guest_view, ring_pages)
    host_view = host.grants.create(child, view_id, pages).view
    guest = ChannelEnd.guest(guest_view, ring_pages, lambda: None)
    host_end = ChannelEnd.host(host_view, ring_pages, lambda: None)
    return guest, host_end


def c_memcpy(size: int, count: int):
    """A round of the baseline: `count` copies of `size` bytes in C, one crossing."""
    return _binding.bench_memcpy(size, count)


def run(size: str = "default") -> list[Figure]:
    min_s = MIN_SECONDS[size]
    host = Host(logical_processors=2, memory="256MiB", seed=1)
    child = VmWorker(host, VmSpec("bench", memory="8MiB")).build()
    figures = []
    for view_id, (payload, count) in enumerate(SIZES[size].items(), start=1):
        ring_pages = 1 + -(-(count * packet_size(payload) + 8) // 4096)
        guest, host_end = _channel(host, child, view_id, ring_pages)
        payloads = [bytes([i % 251]) * payload for i in range(count)]

        def python_ring():
            out, inc = OutgoingRing(guest.outgoing._mem), IncomingRing(host_end.incoming._mem)
            for p in payloads:
                out.write(p)
            while inc.read() is not None:
                pass
            inc.commit()

        def one_per_call():
            for p in payloads:
                guest.send(p)
                host_end.receive()

        def batched():
            written, _ = guest.outgoing.write_batch(payloads)
            packets, _ = host_end.incoming.read_batch(count)
            if not written == len(packets) == count:
                raise RuntimeError(f"batch moved {written} / {len(packets)} of {count} packets")

        label = "64 KiB" if payload == 65536 else f"{payload} B"
        base = rate(c_memcpy(payload, count), count, min_seconds=min_s)
        baseline = f"memcpy in C, {label}"
        cases = [(baseline, None, base),
                 (f"pure-Python ring, 1 packet/call, {label}", None, rate(python_ring, count, min_seconds=min_s)),
                 (f"channel API, 1 packet per call, {label}", "one", rate(one_per_call, count, min_seconds=min_s)),
                 (f"core batch path, {count} per call, {label}", "batch", rate(batched, count, min_seconds=min_s))]
        data_size = (ring_pages - 1) * 4096
        cases.append((f"floor: the batch path's C calls alone, {count} per call, {label}", None,
                      rate(_binding.bench_ring_batch(payloads, data_size), count, min_seconds=min_s)))
        if payload == 64:
            crossings = stmt_rate("nop(); nop()", {"nop": _binding.hv_nop_raw}, min_seconds=min_s)
            cases.append(("floor: two empty cffi calls (one send's and one receive's crossing)", None,
                          crossings))
            cases.append((f"floor: Python's part of a batch ({count} lengths and one join), {label}", None,
                          rate(lambda: (array.array("I", map(len, payloads)), b"".join(payloads)), count,
                               min_seconds=min_s)))
        for name, kind, r in cases:
            figures.append(Figure(name, r, "packets/s", baseline, r / base, GOALS.get((payload, kind)),
                                  extra={"MB_per_s": r * payload / 1e6}))
    return figures
