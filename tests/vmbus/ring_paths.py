"""One interface over both ring implementations, for the ring tests: "py" drives vmbus.ring's
one-packet reference path (write / read + commit), "c" its batch path through the C core, "c1"
the C core one packet per call (write_packet / read_batch(1))."""
from __future__ import annotations

from vmbus.ring import CONTROL_SIZE, IncomingRing, OutgoingRing, Packet, RingFull, init_ring

PATHS = ("py", "c", "c1")


def new_ring(dsize: int, *, fill: int = 0, feature_bits: int = 1) -> bytearray:
    """A ring buffer with an initialised control page and a data area filled with `fill`."""
    buf = bytearray(CONTROL_SIZE) + bytearray([fill]) * dsize
    init_ring(buf, feature_bits=feature_bits)
    return buf


def write(path: str, ring: OutgoingRing, payloads, *, trans_ids=None, **kw) -> tuple[int, bool]:
    """Write payloads in order until one does not fit: (number written, signal)."""
    if path == "c":
        return ring.write_batch(payloads, trans_ids=trans_ids, **kw)
    signal = False
    one = ring.write_packet if path == "c1" else ring.write
    for i, payload in enumerate(payloads):
        try:
            signal |= one(payload, trans_id=0 if trans_ids is None else trans_ids[i], **kw)
        except RingFull:
            return i, signal
    return len(payloads), signal


def read(path: str, ring: IncomingRing, max_packets: int = 1 << 20) -> tuple[list[Packet], bool]:
    """Read up to max_packets packets and commit them: (packets, signal)."""
    if path == "c":
        return ring.read_batch(max_packets)
    if path == "c1":
        packets, signal = [], False
        while len(packets) < max_packets:
            batch, more = ring.read_batch(1)
            signal |= more
            if not batch:
                break
            packets += batch
        return packets, signal
    packets = []
    while len(packets) < max_packets:
        packet = ring.read()
        if packet is None:
            break
        packets.append(packet)
    return packets, ring.commit()
