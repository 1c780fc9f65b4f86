"""The heartbeat IC's wire format: the host sends a sequence number every couple of seconds, the
guest answers it plus one.

Body (OpenVMM's HeartbeatMessage, 16 bytes): sequence u64, application_state u32, reserved u32.
Linux's guest reads only the sequence (it needs 8 bytes) and answers in the host's buffer.
"""
from __future__ import annotations

import struct
import uuid

from drivers.ic.framing import IcError, Version

CLASS_ID = uuid.UUID("57164f39-9115-4e78-ab55-382f3bd5422d")
VERSIONS = (Version(3, 0), Version(1, 0))  # Linux's list; newest first

# application_state
UNKNOWN, HEALTHY, CRITICAL, STOPPED = 0, 1, 2, 3

_MESSAGE = struct.Struct("<QI4x")
_SEQUENCE = struct.Struct("<Q")


def message(sequence: int, state: int = UNKNOWN) -> bytes:
    return _MESSAGE.pack(sequence & 0xFFFF_FFFF_FFFF_FFFF, state)


def parse(body: bytes) -> tuple[int, int]:
    """(sequence, application state); the state is UNKNOWN in a short (Linux-style) body."""
    if len(body) < _SEQUENCE.size:
        raise IcError(f"a heartbeat carries an 8-byte sequence, got {len(body)} bytes")
    if len(body) < _MESSAGE.size:
        return _SEQUENCE.unpack_from(body)[0], UNKNOWN
    return _MESSAGE.unpack_from(body)
