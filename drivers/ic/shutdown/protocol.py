"""The shutdown IC's wire format: the host asks the guest to shut down, restart or hibernate.

Body (2060 bytes): reason_code u32, timeout_seconds u32, flags u32 (bit 0 force, bit 1 restart,
bit 2 hibernate), display_message[2048] (UTF-16LE, NUL-terminated, as Windows' WCHAR text).
"""
from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from drivers.ic.framing import HV_INVALIDARG, IcError, Version

CLASS_ID = uuid.UUID("0e0b6031-5213-4934-818b-38d90ced39db")
VERSIONS = (Version(3, 2), Version(3, 1), Version(3, 0), Version(1, 0))  # Linux's list

FORCE, RESTART, HIBERNATE = 1, 2, 4
REASON_PLANNED = 0x80000000  # SHTDN_REASON_FLAG_PLANNED
MESSAGE_SIZE = 2048

_FIXED = struct.Struct("<III")
BODY_SIZE = _FIXED.size + MESSAGE_SIZE


@dataclass(frozen=True)
class ShutdownRequest:
    reason: int
    timeout_s: int
    force: bool
    restart: bool
    hibernate: bool
    message: str


def encode(request: ShutdownRequest) -> bytes:
    if not (0 <= request.reason <= 0xFFFF_FFFF and 0 <= request.timeout_s <= 0xFFFF_FFFF):
        raise ValueError("the reason code and the timeout are u32")
    text = request.message.encode("utf-16-le") + b"\0\0"
    if len(text) > MESSAGE_SIZE:
        raise ValueError(f"the display message takes {len(text)} bytes in UTF-16, at most {MESSAGE_SIZE}")
    flags = FORCE * request.force | RESTART * request.restart | HIBERNATE * request.hibernate
    return _FIXED.pack(request.reason, request.timeout_s, flags) + text.ljust(MESSAGE_SIZE, b"\0")


def parse(body: bytes) -> ShutdownRequest:
    if len(body) < BODY_SIZE:
        raise IcError(f"a shutdown message is {BODY_SIZE} bytes, got {len(body)}")
    reason, timeout_s, flags = _FIXED.unpack_from(body)
    if flags & ~(FORCE | RESTART | HIBERNATE):
        raise IcError(f"unknown shutdown flags 0x{flags:x}", status=HV_INVALIDARG)
    raw = body[_FIXED.size:BODY_SIZE]
    end = next((i for i in range(0, MESSAGE_SIZE, 2) if raw[i:i + 2] == b"\0\0"), None)
    if end is None:
        raise IcError("the display message is not NUL-terminated")
    try:
        text = raw[:end].decode("utf-16-le")
    except UnicodeDecodeError as exc:
        raise IcError(f"the display message is not UTF-16: {exc}") from None
    return ShutdownRequest(reason, timeout_s, bool(flags & FORCE), bool(flags & RESTART),
                           bool(flags & HIBERNATE), text)
