"""The heartbeat IC's wire format: the host sends a sequence number every couple of seconds, the
guest answers it plus one.

Body (Linux's struct heartbeat_msg_data, 40 bytes): sequence u64, then 32 reserved bytes, of
which the first u32 is OpenVMM's application_state. Linux's guest drops a heartbeat shorter than
the header plus these 40 bytes, reads only the sequence, and answers in the host's buffer.
"""
from __future__ import annotations

import struct
import uuid

from drivers.ic.framing import IcError, Version

CLASS_ID = uuid.UUID("57164f39-9115-4e78-ab55-382f3bd5422d")
VERSIONS = (Version(3, 0), Version(1, 0))  # Linux's list; newest first

# application_state
UNKNOWN, HEALTHY, CRITICAL, STOPPED = 0, 1, 2, 3

_MESSAGE = struct.Struct("<QI28x")   # 40 bytes, sizeof(struct heartbeat_msg_data)
_STATE = struct.Struct("<QI")
_SEQUENCE = struct.Struct("<Q")


MASK = 0xFFFF_FFFF_FFFF_FFFF
PACK = _MESSAGE.pack          # (sequence, state): a whole body, for the periodic paths
SEQUENCE = _SEQUENCE.unpack_from
STATE = _STATE.unpack_from


def message(sequence: int, state: int = UNKNOWN) -> bytes:
    return _MESSAGE.pack(sequence & 0xFFFF_FFFF_FFFF_FFFF, state)


def parse(body: bytes) -> tuple[int, int]:
    """(sequence, application state); the state is UNKNOWN in a short (Linux-style) body."""
    if len(body) < _SEQUENCE.size:
        raise IcError(f"a heartbeat carries an 8-byte sequence, got {len(body)} bytes")
    if len(body) < _STATE.size:
        return _SEQUENCE.unpack_from(body)[0], UNKNOWN
    return _STATE.unpack_from(body)
