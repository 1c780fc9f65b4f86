"""Benchmark of the VMBus ring: packets per wall-clock second through the pure-Python ring (one
packet per call) and the C batch path, as ratios to a pure-Python deque measured in the same run.

Every case moves the same payloads in rounds of BATCH packets: all written, then all read and
committed. The deque baseline is the cheapest Python queue there is (append / popleft of the
same bytes objects: no copy, no object made), so "vs_deque" is what the ring's copies, layout,
checks and the Packet object per read cost over moving references; "vs_python_ring" is what the
C batch path gains over the pure-Python reference. A reader that hands each packet to Python
pays for one object per packet however the bytes were copied: "write only" shows the C path
without that cost.
"""
from __future__ import annotations

from collections import deque

from bench.timing import rate
from vmbus.ring import CONTROL_SIZE, IncomingRing, OutgoingRing, init_ring, packet_size

BATCH = 1000
PAYLOAD_SIZES = (64, 1500)
MIN_SECONDS = 0.3  # per measurement, so that timer noise is small


def _ring_for(payload_size: int) -> bytearray:
    data = 4096
    while data - 8 < BATCH * packet_size(payload_size):
        data *= 2
    buf = bytearray(CONTROL_SIZE + data)
    init_ring(buf)
    return buf


def _rate(round_fn) -> float:
    """Packets per second of round_fn (which moves BATCH packets), best of three runs."""
    return rate(round_fn, BATCH, min_seconds=MIN_SECONDS / 3)


def _deque_round(payloads):
    queue = deque()

    def round_():
        for p in payloads:
            queue.append(p)
        for _ in payloads:
            queue.popleft()

    return round_


def _python_round(payloads):
    buf = _ring_for(len(payloads[0]))
    out, inc = OutgoingRing(buf), IncomingRing(buf)

    def round_():
        for p in payloads:
            out.write(p)
        while inc.read() is not None:
            pass
        inc.commit()

    return round_


def _c_round(payloads):
    buf = _ring_for(len(payloads[0]))
    out, inc = OutgoingRing(buf), IncomingRing(buf)

    def round_():
        written, _ = out.write_batch(payloads)
        packets, _ = inc.read_batch(BATCH)
        assert written == len(packets) == BATCH

    return round_


def _c_write_only(payloads):
    buf = _ring_for(len(payloads[0]))
    out = OutgoingRing(buf)

    def round_():
        out.write_batch(payloads)
        buf[4:8] = buf[0:4]  # drop everything unread: the reader "consumed" it for free

    return round_


def run() -> list[dict]:
    """One row per (payload size, path): packets/s, and the ratio to the deque baseline."""
    rows = []
    for size in PAYLOAD_SIZES:
        payloads = [bytes([i % 251]) * size for i in range(BATCH)]
        baseline = _rate(_deque_round(payloads))
        python_ring = _rate(_python_round(payloads))
        cases = [
            ("deque (baseline)", baseline),
            ("python ring, 1 packet/call", python_ring),
            (f"C batch, {BATCH}/call, write+read", _rate(_c_round(payloads))),
            (f"C batch, {BATCH}/call, write only", _rate(_c_write_only(payloads))),
        ]
        for name, rate in cases:
            rows.append({
                "bench": "vmbus ring",
                "case": name,
                "payload_bytes": size,
                "packets_per_s": round(rate),
                "vs_deque": round(rate / baseline, 3),
                "vs_python_ring": round(rate / python_ring, 2),
            })
    return rows


def main() -> None:
    for row in run():
        print(f"{row['payload_bytes']:>5} B  {row['case']:<34} {row['packets_per_s']:>12,} pkt/s"
              f"  {row['vs_deque']:>7.3f}x deque  {row['vs_python_ring']:>6.2f}x python ring")


if __name__ == "__main__":
    main()
