"""The echo device's wire format: a version negotiation, then echo requests and replies.

Every packet payload starts with an 8-byte header: message type u32, status u32. Then:
  VERSION_REQUEST (1): version u32, pad u32        -> VERSION_RESPONSE (2): version u32, accepted u32
  ECHO_REQUEST (3):    data (up to MAX_DATA bytes)  -> ECHO_REPLY (4): the same data
Requests carry a transaction id (the ring descriptor's trans_id) that the reply repeats.
"""
from __future__ import annotations

import struct
import uuid

CLASS_ID = uuid.UUID("6e0d8e9f-5f4c-4d3a-9a0e-8f2b7c1d0e11")  # hvsim's own: not a Hyper-V device

VERSION_1 = 0x00010000
VERSION_2 = 0x00020000
VERSIONS = (VERSION_2, VERSION_1)  # newest first

VERSION_REQUEST, VERSION_RESPONSE, ECHO_REQUEST, ECHO_REPLY = 1, 2, 3, 4
STATUS_OK, STATUS_BAD_REQUEST, STATUS_NOT_NEGOTIATED = 0, 1, 2
MAX_DATA = 3072

_HEADER = struct.Struct("<II")
_VERSION = struct.Struct("<II")


class EchoProtocolError(ValueError):
    """A packet that is not a well-formed echo message."""


def encode(kind: int, body: bytes = b"", status: int = STATUS_OK) -> bytes:
    return _HEADER.pack(kind, status) + body


def decode(payload: bytes) -> tuple[int, int, bytes]:
    """(type, status, body) of a packet payload. The payload is what the ring delivered (padded
    to 8 bytes), so bodies carry their own lengths where it matters."""
    if len(payload) < _HEADER.size:
        raise EchoProtocolError(f"an echo packet has an {_HEADER.size}-byte header, got {len(payload)} bytes")
    kind, status = _HEADER.unpack_from(payload)
    if kind not in (VERSION_REQUEST, VERSION_RESPONSE, ECHO_REQUEST, ECHO_REPLY):
        raise EchoProtocolError(f"unknown echo message type {kind}")
    return kind, status, bytes(payload[_HEADER.size:])


def version_request(version: int) -> bytes:
    return encode(VERSION_REQUEST, _VERSION.pack(version, 0))


def version_response(version: int, accepted: bool) -> bytes:
    return encode(VERSION_RESPONSE, _VERSION.pack(version, int(accepted)))


def parse_version(body: bytes) -> tuple[int, int]:
    if len(body) < _VERSION.size:
        raise EchoProtocolError("short version message")
    return _VERSION.unpack_from(body)


def echo_body(data: bytes) -> bytes:
    """Echo data goes with its length first: ring payloads are padded to 8 bytes."""
    if len(data) > MAX_DATA:
        raise ValueError(f"echo data is at most {MAX_DATA} bytes, got {len(data)}")
    return struct.pack("<I", len(data)) + data


def parse_echo(body: bytes) -> bytes:
    if len(body) < 4:
        raise EchoProtocolError("short echo message")
    (n,) = struct.unpack_from("<I", body)
    if n > MAX_DATA or 4 + n > len(body):
        raise EchoProtocolError(f"echo data length {n} does not fit the packet")
    return body[4:4 + n]
