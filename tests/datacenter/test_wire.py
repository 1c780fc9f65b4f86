"""The framed stream to a host in another process (partitions.datacenter.wire): frames go through
whole, and every damaged, truncated, oversized, foreign, replayed or missing frame is one
WireError, never a hang or a wrong object."""
import socket
import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from partitions.datacenter import wire
from partitions.datacenter.wire import FrameStream, WireError, encode_frame, parse_address

TIMEOUT = 5.0   # seconds: only a test that fails waits this long; the ones that time out on purpose set less


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield FrameStream(a, peer="a", timeout=TIMEOUT), FrameStream(b, peer="b", timeout=TIMEOUT)
    a.close()
    b.close()


def _received(data: bytes, timeout: float = TIMEOUT, frames: int = 1):
    """What a reader makes of `data` written whole and then the connection closed."""
    a, b = socket.socketpair()
    try:
        a.sendall(data)
        a.close()
        stream = FrameStream(b, peer="peer", timeout=timeout)
        return [stream.receive() for _ in range(frames)]
    finally:
        b.close()


def _frame_with(version=wire.VERSION, flags=0, sequence=0, payload=b"\x80", length=None) -> bytes:
    """A frame whose header digest is right for whatever fields it is given."""
    fields = struct.pack("<4sHHII", wire.MAGIC, version, flags, sequence, len(payload) if length is None else length)
    header = fields + wire._header_digest(fields)
    import hashlib
    return header + payload + hashlib.blake2b(header + payload, digest_size=16).digest()


def test_frames_go_through_whole_and_in_order(pair):
    a, b = pair
    objects = [{"op": "hello", "version": 1}, {"outbox": [["a", "b", "ping", b"\x00" * 70_000, 70_000, 5, 0, None, None]]},
               {"summary": {"vms": [], "utilisation": 0.25, "ok": True, "none": None}}]
    for obj in objects:   # one at a time: a socketpair's buffer holds less than the 70 KB frame
        a.send(obj)
        assert b.receive() == obj
    b.send({"now": 2**63 - 1})
    assert a.receive() == {"now": 2**63 - 1}
    assert (a.sent, a.received, b.sent, b.received) == (3, 1, 1, 3)


def test_a_closed_connection_is_an_error_that_names_the_peer():
    with pytest.raises(WireError, match=r"^peer: the connection closed$"):
        _received(b"")


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_every_damaged_byte_is_caught(data):
    frame = encode_frame({"op": "advance", "until": 123_456, "accept": [b"payload"]}, 0)
    at = data.draw(st.integers(0, len(frame) - 1))
    bit = data.draw(st.integers(0, 7))
    damaged = bytearray(frame)
    damaged[at] ^= 1 << bit
    with pytest.raises(WireError):
        _received(bytes(damaged))


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_every_truncation_is_caught(data):
    frame = encode_frame({"op": "summary", "payload": b"x" * 300}, 0)
    cut = data.draw(st.integers(0, len(frame) - 1))
    with pytest.raises(WireError, match="the connection closed"):
        _received(frame[:cut])


def test_a_length_over_the_limit_is_refused_from_the_header_alone():
    # Only the header is sent, and the connection stays open: the reader must not wait for the body.
    a, b = socket.socketpair()
    try:
        a.sendall(_frame_with(length=wire.MAX_FRAME_BYTES + 1)[:24])
        with pytest.raises(WireError, match="over the limit"):
            FrameStream(b, peer="peer", timeout=TIMEOUT).receive()
    finally:
        a.close()
        b.close()


def test_another_protocol_version_is_named():
    with pytest.raises(WireError, match="the peer speaks protocol version 2; this hvsim speaks 1"):
        _received(_frame_with(version=2))


def test_unknown_flags_are_refused():
    with pytest.raises(WireError, match="flags 0x0001"):
        _received(_frame_with(flags=1))


def test_something_else_than_a_frame_is_refused():
    with pytest.raises(WireError, match="not an hvsim wire frame"):
        _received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


def test_a_repeated_or_skipped_frame_is_refused():
    frame = encode_frame({"op": "advance"}, 0)
    with pytest.raises(WireError, match="frame 0 arrived where frame 1 was due"):
        _received(frame + frame, frames=2)
    with pytest.raises(WireError, match="frame 1 arrived where frame 0 was due"):
        _received(encode_frame({"op": "advance"}, 1))


@pytest.mark.parametrize("payload", [
    msgpack.packb(msgpack.ExtType(5, b"abc")),                             # an extension type
    msgpack.packb(msgpack.Timestamp(1, 0), datetime=False),               # the timestamp extension
    b"\x81\x01\x02",                                                       # a map with an integer key
    b"\xc1",                                                               # a byte msgpack never uses
    msgpack.packb({"a": 1}) + b"\x00",                                     # two objects in one frame
    b"\xdd\xff\xff\xff\xff",                                               # an array claiming 4 G elements
])
def test_payloads_outside_the_limits_are_refused(payload):
    with pytest.raises(WireError, match="not an acceptable msgpack object"):
        _received(_frame_with(payload=payload))


def test_a_silent_peer_and_a_trickle_time_out():
    a, b = socket.socketpair()
    try:
        with pytest.raises(WireError, match=r"no answer within 0.2 s"):
            FrameStream(b, peer="peer", timeout=0.2).receive()
        a.sendall(encode_frame({"op": "x" * 100}, 0)[:30])   # half a frame, and then nothing
        with pytest.raises(WireError, match=r"a frame stopped after 30 of \d+ bytes for 0.2 s"):
            FrameStream(b, peer="peer", timeout=0.2).receive()
    finally:
        a.close()
        b.close()


def test_a_stream_is_unusable_after_an_error(pair):
    a, b = pair
    a.sock.sendall(b"HVWF" + bytes(20))
    with pytest.raises(WireError, match="header fails its digest"):
        b.receive()
    a.send({"op": "advance"})   # a good frame after a bad one is not trusted either
    with pytest.raises(WireError, match=r"unusable \(a frame header fails its digest"):
        b.receive()
    with pytest.raises(WireError, match="unusable"):
        b.send({"op": "advance"})


def test_a_frame_too_large_is_not_sent(monkeypatch, pair):
    monkeypatch.setattr(wire, "MAX_FRAME_BYTES", 1000)
    with pytest.raises(WireError, match="over the limit of 1000"):
        pair[0].send({"payload": b"x" * 1000})
    with pytest.raises(TypeError, match="cannot be sent as msgpack"):
        pair[0].send({"payload": object()})


def test_addresses():
    assert parse_address("127.0.0.1:7000") == ("127.0.0.1", 7000)
    assert parse_address("[::1]:0") == ("::1", 0)
    assert parse_address("host-b.example:65535") == ("host-b.example", 65535)
    for bad in ("127.0.0.1", ":7000", "127.0.0.1:70000", "127.0.0.1:x", "a b:1", "127.0.0.1:-1"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_address(bad)
