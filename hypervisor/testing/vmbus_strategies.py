"""Hypothesis strategies for VMBus: hostile ring states, channel-management messages (valid,
truncated, out of place, garbled) and device packets, so users fuzz their own devices the way
hvsim fuzzes its own.

N.B. The test kit sits above every layer it exercises: these strategies import `vmbus` inside
their bodies, so `hypervisor` itself never depends on `vmbus` (imports point downward).
"""
from __future__ import annotations

import struct

from hypothesis import strategies as st

PAGE = 4096


@st.composite
def ring_images(draw, data_pages: int = 1, hostile: bool = True) -> bytearray:
    """A ring buffer image (4 KiB control page + data) in the Hyper-V layout: a few well-formed
    packets written by the reference writer, then, when `hostile`, one thing a malicious peer
    does: indices out of range or unaligned, read_index moved, a descriptor with len8 < offset8
    or longer than the data available, or random bytes anywhere."""
    from vmbus.ring import CONTROL_SIZE, OutgoingRing, RingFull, init_ring
    buf = bytearray(CONTROL_SIZE + data_pages * PAGE)
    init_ring(buf)
    out = OutgoingRing(buf)
    for payload in draw(st.lists(st.binary(max_size=200), max_size=8)):
        try:
            out.write(payload, trans_id=draw(st.integers(0, 2**64 - 1)))
        except RingFull:
            break
    if hostile:
        dsize = data_pages * PAGE
        kind = draw(st.sampled_from(["write_index", "read_index", "descriptor", "bytes", "none"]))
        if kind == "write_index":
            struct.pack_into("<I", buf, 0, draw(st.one_of(st.integers(dsize, 2**32 - 1),
                                                           st.integers(0, dsize - 1).filter(lambda v: v % 8))))
        elif kind == "read_index":
            struct.pack_into("<I", buf, 4, draw(st.integers(0, 2**32 - 1)))
        elif kind == "descriptor":
            read = struct.unpack_from("<I", buf, 4)[0]
            at = CONTROL_SIZE + read
            if at + 16 <= len(buf):
                struct.pack_into("<HHH", buf, at, draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 0xFFFF)),
                                 draw(st.integers(0, 0xFFFF)))
        elif kind == "bytes":
            for _ in range(draw(st.integers(1, 16))):
                buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
    return buf


def control_messages(*, valid_only: bool = False) -> st.SearchStrategy[bytes]:
    """Raw channel-management messages (what a SynIC message payload carries): encodings of
    every message type with arbitrary field values, and, unless `valid_only`, truncated ones,
    unknown types and random bytes."""
    from vmbus import protocol

    encoded = st.sampled_from(protocol.MESSAGES).flatmap(
        lambda spec: st.binary(min_size=spec.size - 8, max_size=spec.size - 8 + (64 if spec.tail else 0)).map(
            lambda body, spec=spec: struct.pack("<II", spec.id, 0) + body))
    decodable = encoded.filter(_decodes)
    if valid_only:
        return decodable
    return st.one_of(
        decodable,
        encoded,                                                   # fields out of range
        encoded.flatmap(lambda raw: st.integers(0, len(raw) - 1).map(lambda n: raw[:n])),  # truncated
        st.integers(18, 2**32 - 1).map(lambda t: struct.pack("<II", t, 0) + bytes(32)),  # unknown type
        st.binary(max_size=240),
    )


def _decodes(raw: bytes) -> bool:
    from vmbus import protocol
    try:
        protocol.decode(raw)
        return True
    except protocol.ProtocolError:
        return False


@st.composite
def device_packets(draw, max_size: int = 512):
    """(payload, trans_id, flags) a hostile peer sends a device: arbitrary payloads and
    transaction ids, including ones that look like pointers."""
    return (draw(st.binary(max_size=max_size)), draw(st.integers(0, 2**64 - 1)), draw(st.integers(0, 1)))


def fuzz_vsp(device, packets, config=None):
    """Push `packets` (from device_packets) at a device's VSP over an in-process channel, the
    way a hostile guest would; returns (vsp, what came back). Raises whatever the VSP raises:
    a VSP that raises on a hostile packet is the bug to find."""
    from vmbus.channel import connected_pair
    host_end, guest_end = connected_pair()
    vsp = device.vsp(host_end, config)
    host_end.on_signal = lambda: vsp.on_packets(host_end.receive())
    vsp.on_open()
    replies = []
    guest_end.on_signal = lambda: replies.extend(guest_end.receive())
    for payload, trans_id, flags in packets:
        guest_end.send(payload, trans_id=trans_id, flags=flags)
    return vsp, replies
