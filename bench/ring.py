"""The VMBus ring alone (in a bytearray): packets per wall second through the pure-Python ring
(one packet per call) and the C batch path, as ratios to memcpy in C measured in the same run.

Every case moves the same payloads in rounds of BATCH packets: all written, then all read and
committed. The baseline is memcpy in C of the same bytes, packet by packet, in one crossing (the
least a ring can cost: each packet is copied in at least once). The deque (append / popleft of
the same bytes objects: no copy, no object made) is the cheapest Python queue there is. A reader
that hands each packet to Python pays for one object per packet however the bytes were copied:
"write only" shows the C path without that cost.
"""
from __future__ import annotations

from collections import deque

from bench.timing import Figure, rate
from vmbus.ring import CONTROL_SIZE, IncomingRing, OutgoingRing, init_ring, packet_size

BATCH = {"tiny": 10, "default": 1000, "long": 1000}
PAYLOAD_SIZES = (64, 1500)
MIN_SECONDS = {"tiny": 0.001, "default": 0.1, "long": 0.5}


def _ring_for(payload_size: int, count: int) -> bytearray:
    data = 4096
    while data - 8 < count * packet_size(payload_size):
        data *= 2
    buf = bytearray(CONTROL_SIZE + data)
    init_ring(buf)
    return buf


def _rate(round_fn, count: int, size: str) -> float:
    """Packets per second of round_fn (which moves `count` packets)."""
    return rate(round_fn, count, min_seconds=MIN_SECONDS[size])


def _deque_round(payloads):
    queue = deque()

    def round_():
        for p in payloads:
            queue.append(p)
        for _ in payloads:
            queue.popleft()

    return round_


def _python_round(payloads):
    buf = _ring_for(len(payloads[0]), len(payloads))
    out, inc = OutgoingRing(buf), IncomingRing(buf)

    def round_():
        for p in payloads:
            out.write(p)
        while inc.read() is not None:
            pass
        inc.commit()

    return round_


def _c_round(payloads):
    buf = _ring_for(len(payloads[0]), len(payloads))
    out, inc = OutgoingRing(buf), IncomingRing(buf)

    def round_():
        written, _ = out.write_batch(payloads)
        packets, _ = inc.read_batch(len(payloads))
        if not written == len(packets) == len(payloads):
            raise RuntimeError(f"batch moved {written} / {len(packets)} of {len(payloads)} packets")

    return round_


def _c_write_only(payloads):
    buf = _ring_for(len(payloads[0]), len(payloads))
    out = OutgoingRing(buf)

    def round_():
        out.write_batch(payloads)
        buf[4:8] = buf[0:4]  # drop everything unread: the reader "consumed" it for free

    return round_


def run(size: str = "default") -> list[Figure]:
    """Per payload size: packets/s of each path, as a ratio to memcpy in C of the same bytes."""
    from bench.channel import c_memcpy
    batch = BATCH[size]
    figures = []
    for payload in PAYLOAD_SIZES:
        payloads = [bytes([i % 251]) * payload for i in range(batch)]
        base = _rate(c_memcpy(payload, batch), batch, size)
        baseline = f"memcpy in C, {payload} B"
        cases = [
            (baseline, base),
            (f"deque append/popleft, {payload} B", _rate(_deque_round(payloads), batch, size)),
            (f"python ring, 1 packet/call, {payload} B", _rate(_python_round(payloads), batch, size)),
            (f"C batch, {batch}/call, write+read, {payload} B", _rate(_c_round(payloads), batch, size)),
            (f"C batch, {batch}/call, write only, {payload} B", _rate(_c_write_only(payloads), batch, size)),
        ]
        for name, r in cases:
            figures.append(Figure(name, r, "packets/s", baseline, r / base))
    return figures
