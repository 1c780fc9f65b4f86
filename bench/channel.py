"""One VMBus channel's data plane: packets and bytes per wall second through a ring in a child's
pages, seen by the parent through a grant and by the guest through its own view (two mappings of
the same host pages, as on Hyper-V), for 64-byte and 64 KiB payloads.

Paths: the pure-Python ring of the same layout one packet at a time (the reference), the channel
API one packet per call (each receive crosses into the core once), and the core's batch path
(many packets per crossing); baselines in the same run: memcpy of the same bytes (a bytearray
slice copy) and the pure-Python ring.
"""
from __future__ import annotations


from bench.timing import rate
from hypervisor import Host
from hypervisor.grants import own_view
from partitions.worker import VmSpec, VmWorker
from vmbus.channel import ChannelEnd, init_ring_gpadl
from vmbus.ring import IncomingRing, OutgoingRing, packet_size

MIN_SECONDS = 0.3
SIZES = {64: 1000, 65536: 15}  # payload bytes -> packets per round


def _rate(round_fn, per_round: int) -> float:
    return rate(round_fn, per_round, min_seconds=MIN_SECONDS / 3)


def _channel(host: Host, child, view_id: int, ring_pages: int):
    """(guest end, host end) of one channel whose rings live in the child's pages."""
    pages = list(range(16, 16 + 2 * ring_pages))
    guest_view = own_view(child, view_id, pages)
    init_ring_gpadl(guest_view, ring_pages)
    host_view = host.grants.create(child, view_id, pages).view
    guest = ChannelEnd.guest(guest_view, ring_pages, lambda: None)
    host_end = ChannelEnd.host(host_view, ring_pages, lambda: None)
    return guest, host_end


def run() -> list[dict]:
    host = Host(logical_processors=2, memory="256MiB", seed=1)
    child = VmWorker(host, VmSpec("bench", memory="8MiB")).build()
    rows = []
    for view_id, (size, count) in enumerate(SIZES.items(), start=1):
        ring_pages = 1 + -(-(count * packet_size(size) + 8) // 4096)
        guest, host_end = _channel(host, child, view_id, ring_pages)
        payloads = [bytes([i % 251]) * size for i in range(count)]
        scratch = bytearray(count * size)

        def memcpy():
            o = 0
            for p in payloads:
                scratch[o:o + size] = p
                o += size

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
            assert written == len(packets) == count

        base_memcpy = _rate(memcpy, count)
        base_python = _rate(python_ring, count)
        for name, fn in (("memcpy of the same bytes (baseline)", memcpy),
                         ("pure-Python ring, 1 packet/call (baseline)", python_ring),
                         ("channel API, 1 packet per call", one_per_call),
                         (f"core batch path, {count} packets per call", batched)):
            rate = base_memcpy if fn is memcpy else base_python if fn is python_ring else _rate(fn, count)
            rows.append({"payload_bytes": size, "case": name, "packets_per_s": rate,
                         "MB_per_s": rate * size / 1e6, "vs_memcpy": rate / base_memcpy,
                         "vs_python_ring": rate / base_python})
    return rows
