"""The framed stream a datacenter talks to a host in another process over: versioned,
length-prefixed msgpack frames, each checksummed, opened by a hello (docs/wire.md).

    stream = FrameStream(sock, peer="127.0.0.1:7000", timeout=DEFAULT_TIMEOUT)
    stream.send({"op": "advance", "until": 50_000})
    reply = stream.receive()          # WireError if the stream is closed, damaged or too slow

Frame layout (integers little-endian; digests BLAKE2b, as partitions.savedstate uses)::

    header, 24 bytes
      0   4  magic b"HVWF"
      4   2  protocol version, u16 (this module speaks 1)
      6   2  flags, u16: none defined; a reader refuses any bit
      8   4  sequence, u32: the frames this side sent before this one on the connection
     12   4  payload length L, u32, at most MAX_FRAME_BYTES
     16   8  header digest: BLAKE2b-64 of bytes 0..16
    payload, L bytes: one msgpack object (a map)
    trailer, 16 bytes: BLAKE2b-128 of bytes 0..24 || payload

The header has its own digest so that a damaged length is caught before the reader trusts it
(else a length grown by a flipped bit would wait for bytes that never come); the trailer covers
the whole frame. The sequence catches a frame dropped, repeated or replayed by anything between
the two ends. Every failure -- a closed connection, a short read, a bad magic, version, flag,
length, digest, sequence or msgpack object, or a peer that does not answer within the timeout --
raises WireError, and the stream is unusable afterwards (`broken` says why): nothing after a bad
frame can be trusted to be where it should be.

N.B. A digest is integrity, not authenticity: anyone who can reach the port can send good frames.
A served host therefore bounds and checks everything it decodes and confines what a peer's
configuration may touch (docs/wire.md, "What a peer can do").
"""
from __future__ import annotations

import hashlib
import socket
import struct
import time
from typing import Any

import msgpack

MAGIC = b"HVWF"
VERSION = 1
PROTOCOL = "hvsim-wire"
KNOWN_FLAGS = 0

#: Limits a peer cannot talk the reader past. A frame holds one request or answer: a window's
#: messages, a summary, a host's configuration.
MAX_FRAME_BYTES = 64 << 20
MAX_ITEMS = 1 << 20                  # elements of one msgpack array or map
#: Seconds (wall clock) a side waits for a whole frame, and for a connection, unless told
#: otherwise: `[[host]] remote_timeout` on the datacenter's side, `hvsim host serve --timeout`
#: on the served host's. Long enough for a busy host's longest window, short enough that a peer
#: that died without closing its socket is noticed.
DEFAULT_TIMEOUT = 60.0

_HEADER = struct.Struct("<4sHHII8s")
_HEADER_SIGNED = 16
_TRAILER_SIZE = 16
_UNPACK = dict(raw=False, strict_map_key=True, use_list=True, max_ext_len=0, max_str_len=MAX_FRAME_BYTES,
               max_bin_len=MAX_FRAME_BYTES, max_array_len=MAX_ITEMS, max_map_len=MAX_ITEMS)
# Everything msgpack raises on bad input (limits, ExtraData, StackError and bad UTF-8 are ValueErrors).
_DECODE_ERRORS = (ValueError, TypeError, msgpack.UnpackException)


class WireError(ConnectionError):
    """The stream to another process failed: closed, damaged, of another version, or too slow.
    The message says what and where; the stream is unusable afterwards."""


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not allowed")


def _header_digest(fields: bytes) -> bytes:
    return hashlib.blake2b(fields, digest_size=8).digest()


def encode_frame(obj: Any, sequence: int) -> bytes:
    """One frame holding `obj` (msgpack: maps, lists, str, bytes, int, float, bool, None)."""
    try:
        payload = msgpack.packb(obj, use_bin_type=True, datetime=False)
    except (TypeError, ValueError, OverflowError) as e:
        raise TypeError(f"cannot be sent as msgpack: {e}") from None
    if len(payload) > MAX_FRAME_BYTES:
        raise WireError(f"a frame of {len(payload)} bytes is over the limit of {MAX_FRAME_BYTES}")
    fields = struct.pack("<4sHHII", MAGIC, VERSION, 0, sequence & 0xFFFFFFFF, len(payload))
    header = fields + _header_digest(fields)
    trailer = hashlib.blake2b(header, digest_size=_TRAILER_SIZE)
    trailer.update(payload)
    return header + payload + trailer.digest()


def check_header(header: bytes, expected_sequence: int) -> int:
    """The payload length of a frame whose 24-byte header is `header`; WireError if it is not
    the header of frame `expected_sequence` of this protocol version."""
    magic, version, flags, sequence, length, digest = _HEADER.unpack(header)
    if magic != MAGIC:
        raise WireError(f"not an hvsim wire frame (magic {magic!r}, expected {MAGIC!r})")
    if _header_digest(header[:_HEADER_SIGNED]) != digest:
        raise WireError("a frame header fails its digest (the stream is damaged)")
    if version != VERSION:
        raise WireError(f"the peer speaks protocol version {version}; this hvsim speaks {VERSION}")
    if flags & ~KNOWN_FLAGS:
        raise WireError(f"a frame has flags {flags:#06x} this version does not know")
    if length > MAX_FRAME_BYTES:
        raise WireError(f"a frame of {length} bytes is over the limit of {MAX_FRAME_BYTES}")
    if sequence != expected_sequence & 0xFFFFFFFF:
        raise WireError(f"frame {sequence} arrived where frame {expected_sequence} was due (a frame was lost, "
                        "repeated or replayed)")
    return length


def decode_payload(header: bytes, payload: bytes, trailer: bytes) -> Any:
    """The object a frame holds, once its trailer digest matches; WireError otherwise."""
    digest = hashlib.blake2b(header, digest_size=_TRAILER_SIZE)
    digest.update(payload)
    if digest.digest() != trailer:
        raise WireError("a frame fails its digest (the stream is damaged)")
    try:
        return msgpack.unpackb(payload, ext_hook=_refuse_ext, **_UNPACK)
    except _DECODE_ERRORS as e:
        raise WireError(f"a frame's payload is not an acceptable msgpack object: {e}") from None


class FrameStream:
    """Frames over a connected stream socket to `peer` (named in errors). Each `receive` waits at
    most `timeout` seconds for its whole frame; `send` at most as long to hand one over."""

    def __init__(self, sock: socket.socket, *, peer: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout: expected a positive number of seconds, got {timeout!r}")
        self.sock = sock
        self.peer = peer
        self.timeout = timeout
        self.sent = 0            # frames sent, and so the next one's sequence
        self.received = 0        # frames received, and so the sequence due next
        self.broken: str | None = None
        try:   # requests and answers are small and alternate: Nagle would hold each for an ACK
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass                 # not TCP (a socketpair in tests)

    def _fail(self, reason: str) -> WireError:
        self.broken = self.broken or reason
        return WireError(f"{self.peer}: {reason}")

    def send(self, obj: Any) -> None:
        if self.broken:
            raise WireError(f"{self.peer}: the stream is unusable ({self.broken})")
        frame = encode_frame(obj, self.sent)
        try:
            self.sock.settimeout(self.timeout)
            self.sock.sendall(frame)
        except socket.timeout:
            raise self._fail(f"could not send for {self.timeout:g} s (the peer is not reading)") from None
        except OSError as e:
            raise self._fail(f"connection lost while sending ({e.strerror or e})") from None
        self.sent += 1

    def receive(self) -> Any:
        """The next frame's object. WireError if the connection closes, the frame is damaged or
        out of sequence, or it is not whole within the timeout."""
        if self.broken:
            raise WireError(f"{self.peer}: the stream is unusable ({self.broken})")
        deadline = time.monotonic() + self.timeout   # for the whole frame: a trickle cannot stretch it
        try:
            header = self._read(_HEADER.size, deadline, first=True)
            length = check_header(header, self.received)
            body = self._read(length + _TRAILER_SIZE, deadline, offset=_HEADER.size)
            obj = decode_payload(header, body[:length], body[length:])
        except WireError as e:
            raise self._fail(str(e)) from None
        self.received += 1
        return obj

    def _read(self, n: int, deadline: float, first: bool = False, offset: int = 0) -> bytes:
        """`n` more bytes of a frame of which `offset` have been read (for the messages)."""
        buf = bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WireError(f"no answer within {self.timeout:g} s" if first and not buf else
                                f"a frame stopped after {offset + len(buf)} of {offset + n} bytes for "
                                f"{self.timeout:g} s")
            try:
                self.sock.settimeout(left)
                chunk = self.sock.recv(min(n - len(buf), 1 << 20))
            except socket.timeout:
                continue                 # the loop's deadline check says which
            except OSError as e:
                raise WireError(f"connection lost ({e.strerror or e})") from None
            if not chunk:
                raise WireError("the connection closed" if first and not buf else
                                f"the connection closed inside a frame ({offset + len(buf)} of {offset + n} bytes)")
            buf += chunk
        return bytes(buf)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def parse_address(text: str) -> tuple[str, int]:
    """("127.0.0.1", 7000) from "127.0.0.1:7000" ("[::1]:7000" for IPv6); ValueError naming the
    form otherwise. Port 0 is allowed (a listener takes any free port)."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535 or any(c in host for c in " /"):
        raise ValueError(f'expected HOST:PORT such as "127.0.0.1:7000" (port 0-65535), got {text!r}')
    return host, int(port)
