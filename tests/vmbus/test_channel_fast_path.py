"""ChannelEnd.send / receive, whose common case is one crossing each (hv_ring_send /
hv_ring_receive): the same packets, ring bytes, signals and errors as the pure-Python reference
(OutgoingRing.write, IncomingRing.read + commit) on a second copy of the same rings."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypervisor import _binding
from vmbus.channel import ChannelEnd, connected_pair, init_ring_gpadl
from vmbus.ring import CONTROL_SIZE, IncomingRing, OutgoingRing, RingCorrupt, RingFull

PAGE = 4096


class Reference:
    """The guest end's outgoing ring and the host end's incoming ring, driven by write() and
    read() + commit() on their own copy of the memory."""

    def __init__(self, ring_pages: int):
        self.memory = bytearray(2 * ring_pages * PAGE)
        init_ring_gpadl(self.memory, ring_pages)
        up = memoryview(self.memory)[: ring_pages * PAGE]
        self.out, self.inc = OutgoingRing(up), IncomingRing(up)

    def send(self, payload: bytes) -> bool:
        return self.out.write(payload)

    def receive(self):
        packets = []
        while (packet := self.inc.read()) is not None:
            packets.append(packet)
        return packets, self.inc.commit()


ops = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.binary(max_size=300)),
        st.tuples(st.just("send"), st.binary(max_size=12)),
        st.tuples(st.just("receive"), st.none()),
        st.tuples(st.just("mask"), st.booleans()),
        st.tuples(st.just("pending"), st.integers(0, 3000)),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(ops=ops)
def test_send_and_receive_match_the_reference(ops):
    ring_pages = 2  # one data page: sends fill it and wrap
    host, guest = connected_pair(ring_pages)
    signals = {"host": 0, "guest": 0}
    host.on_signal = lambda: signals.__setitem__("host", signals["host"] + 1)
    guest.on_signal = lambda: signals.__setitem__("guest", signals["guest"] + 1)
    ref = Reference(ring_pages)
    for op, arg in ops:
        if op == "send":
            try:
                expected = ref.send(arg)
            except RingFull:
                with pytest.raises(RingFull):
                    guest.send(arg)
            else:
                before = signals["host"]
                guest.send(arg)
                assert signals["host"] - before == int(expected)
        elif op == "receive":
            packets, signal = ref.receive()
            before = signals["guest"]
            assert host.receive() == packets
            assert signals["guest"] - before == int(signal)
        elif op == "mask":
            for inc in (host.incoming, ref.inc):
                inc.mask_interrupts() if arg else inc.unmask_interrupts()
        else:
            for out in (guest.outgoing, ref.out):
                out.set_pending_send_sz(arg)
        up = ring_pages * PAGE
        assert bytes(guest.outgoing._mem) == bytes(ref.memory[:up]), "the paths wrote different bytes"


def test_receive_of_more_than_the_scratch_holds_returns_every_packet_in_order():
    host, guest = connected_pair(16)
    payloads = [bytes([i]) * 1000 for i in range(40)]  # 40 KB of records: several reads
    for p in payloads:
        guest.send(p)
    got = host.receive()
    assert [p.payload[:1000] for p in got] == payloads
    assert host.receive() == []


def test_a_tampered_write_index_is_refused_and_nothing_is_written():
    host, guest = connected_pair(2)
    guest.send(b"first")
    guest.send(b"second")  # the one-crossing path is in use from here on
    up = guest.outgoing._mem
    struct.pack_into("<I", up, 0, 8)  # the peer rewrites the writer's index
    image = bytes(up)
    with pytest.raises(RingCorrupt) as exc:
        guest.send(b"third")
    assert exc.value.kind == "tampered"
    assert bytes(up) == image
    with pytest.raises(RingCorrupt):
        guest.send(b"fourth")  # broken for good


def test_a_tampered_read_index_is_refused_and_nothing_is_read():
    host, guest = connected_pair(2)
    guest.send(b"a")
    host.receive()
    guest.send(b"b")
    host.receive()  # one-crossing path
    guest.send(b"c")
    up = host.incoming._mem
    struct.pack_into("<I", up, 4, 0)
    image = bytes(up)
    with pytest.raises(RingCorrupt) as exc:
        host.receive()
    assert exc.value.kind == "tampered"
    assert bytes(up) == image


def test_good_packets_before_a_corrupt_one_are_delivered_then_the_ring_fails():
    host, guest = connected_pair(2)
    for p in (b"a", b"b"):
        guest.send(p)
    host.receive()
    for p in (b"one", b"two", b"three"):
        guest.send(p)
    up = host.incoming._mem
    start = host.incoming._published + 2 * 32  # the third packet's descriptor (24 + 8 bytes each)
    struct.pack_into("<H", up, CONTROL_SIZE + start + 2, 1)  # offset8 1 < 2: a bad descriptor
    got = host.receive()
    assert [p.payload.rstrip(b"\0") for p in got] == [b"one", b"two"]
    with pytest.raises(RingCorrupt) as exc:
        host.receive()
    assert exc.value.kind == "descriptor"


def _span(buf: bytearray):
    pin = _binding.ring_pin(memoryview(buf))
    return pin, pin.span


def test_hv_ring_send_and_receive_refuse_a_stale_index_without_touching_the_ring():
    buf = bytearray(CONTROL_SIZE + 256)
    OutgoingRing(buf)  # (a fresh ring: both indices 0)
    pin, span = _span(buf)
    rc = _binding.hv_ring_send(span, 0, b"hello", 5)
    assert rc > 0 and rc & 1 and rc >> 2 == 32  # 16 + 8 + 8 bytes, signal on empty -> non-empty
    assert rc & 2
    image = bytes(buf)
    assert _binding.hv_ring_send(span, 0, b"again", 5) == -_binding.lib.HV_RING_ETAMPERED
    assert _binding.hv_ring_receive(span, 8, 16) == -_binding.lib.HV_RING_ETAMPERED
    assert bytes(buf) == image
    rc = _binding.hv_ring_receive(span, 0, 16)
    assert rc & 0xFFFF == 1 and rc >> 32 == 32 and rc >> 19 & 0x1FFF == 24
    assert bytes(pin.scratch_bytes[16:21]) == b"hello"


def test_hv_ring_send_says_when_a_packet_does_not_fit_now():
    buf = bytearray(CONTROL_SIZE + 64)
    OutgoingRing(buf)
    pin, span = _span(buf)
    rc = _binding.hv_ring_send(span, 0, bytes(16), 16)  # 40 bytes: 24 left, 8 always stay free
    assert rc > 0
    image = bytes(buf)
    assert _binding.hv_ring_send(span, rc >> 2, bytes(8), 8) == 0  # needs 32
    assert _binding.hv_ring_send(span, rc >> 2, bytes(64), 64) == -_binding.lib.HV_RING_EMSGSIZE
    assert bytes(buf) == image


def test_write_gathered_refuses_lengths_that_do_not_add_up():
    buf = bytearray(CONTROL_SIZE + 256)
    OutgoingRing(buf)
    pin, _ = _span(buf)
    ffi, lib = _binding.ffi, _binding.lib
    lengths = ffi.new("uint32_t[]", [3, 4])
    result = ffi.new("struct hv_ring_result *")
    image = bytes(buf)
    assert lib.hv_ring_write_gathered(pin.ptr, pin.len, b"abcdefgh", 8, lengths, 2, 6, 0, ffi.NULL,
                                      result) == -lib.HV_RING_EINVAL
    assert bytes(buf) == image
    assert lib.hv_ring_write_gathered(pin.ptr, pin.len, b"abcdefg", 7, lengths, 2, 6, 0, ffi.NULL,
                                      result) == 2
    assert IncomingRing(buf).read_batch()[0][1].payload == b"defg\0\0\0\0"
