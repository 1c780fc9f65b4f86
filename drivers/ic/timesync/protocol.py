"""The time-sync IC's wire format: the host's clock, in 100 ns units since 1601-01-01 UTC.

Version 4 body (22 bytes, Linux's packed struct ictimesync_ref_data; OpenVMM pads to 24):
parenttime u64, vmreferencetime u64 (the partition reference counter when parenttime was read,
which lets the guest add the message's delivery delay), flags u8, leap u8, stratum u8,
reserved[3]. Version 3 and older (25 bytes, Linux's packed struct ictimesync_data; OpenVMM pads
to 28): parenttime u64, childtime u64, roundtriptime u64, flags u8. icmsgsize says these sizes;
the ring pads the packet to 8. Flags: 0 PROBE, 1 SYNC (set the clock: after boot or restore), 2 SAMPLE (a hint).
"""
from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from drivers.ic.framing import IcError, Version

CLASS_ID = uuid.UUID("9527e630-d0ae-497b-adce-e80ab0175caf")
VERSIONS = (Version(4, 0), Version(3, 0), Version(1, 0))  # Linux's list
V4 = Version(4, 0)

PROBE, SYNC, SAMPLE = 0, 1, 2
WLTIMEDELTA = 116_444_736_000_000_000  # 100 ns units from 1601-01-01 to 1970-01-01
DEFAULT_EPOCH_NS = 1_704_067_200 * 10**9  # the host's clock at simulated time 0: 2024-01-01 UTC

_V4 = struct.Struct("<QQBBB3x")   # 22 bytes
_V4_READ = struct.Struct("<QQBBB")   # what a v4 reader needs
_V3 = struct.Struct("<QQQB")      # 25 bytes
_V3_READ = struct.Struct("<QQQB")
_V4_PACK, _V3_PACK = _V4.pack, _V3.pack
_V4_HEAD = struct.Struct("<QQB").unpack_from   # the fields of _V4_READ that read() returns
assert _V4_READ.size == 19 and _V3_READ.size == 25


@dataclass(frozen=True)
class TimeMessage:
    parent_time: int                 # 100 ns since 1601
    flags: int
    reference_time: int | None = None  # 100 ns of the partition's reference counter (v4 only)
    leap: int = 0
    stratum: int = 0


def from_unix_ns(ns: int) -> int:
    return ns // 100 + WLTIMEDELTA


def to_unix_ns(time100: int) -> int:
    return (time100 - WLTIMEDELTA) * 100


def encode(message: TimeMessage, version: Version) -> bytes:
    if version >= V4:
        return _V4.pack(message.parent_time, message.reference_time or 0, message.flags,
                        message.leap, message.stratum)
    return _V3.pack(message.parent_time, 0, 0, message.flags)


def encode_now(host_ns: int, reference: int, flags: int, stratum: int, version: Version) -> bytes:
    """encode(TimeMessage(from_unix_ns(host_ns), flags, reference, stratum=stratum), version),
    without the message object (the host's periodic sample)."""
    if version >= V4:
        return _V4_PACK(host_ns // 100 + WLTIMEDELTA, reference, flags, 0, stratum)
    return _V3_PACK(host_ns // 100 + WLTIMEDELTA, 0, 0, flags)


def read(body: bytes, version: Version) -> tuple[int, int, int | None]:
    """(parent_time, flags, reference_time) of parse(body, version), without the message object
    (the guest's side of every sample); the same checks."""
    if version >= V4:
        if len(body) < 19:   # _V4_READ.size, as parse
            raise IcError(f"a v{version} time message needs 19 bytes, got {len(body)}")
        parent, reference, flags = _V4_HEAD(body)
    else:
        if len(body) < 25:
            raise IcError(f"a v{version} time message needs 25 bytes, got {len(body)}")
        parent, _, _, flags = _V3_READ.unpack_from(body)
        reference = None
    if flags & ~(SYNC | SAMPLE):
        raise IcError(f"unknown time-sync flags 0x{flags:x}")
    return parent, flags, reference


def parse(body: bytes, version: Version) -> TimeMessage:
    layout = _V4_READ if version >= V4 else _V3_READ
    if len(body) < layout.size:
        raise IcError(f"a v{version} time message needs {layout.size} bytes, got {len(body)}")
    if version >= V4:
        parent, reference, flags, leap, stratum = layout.unpack_from(body)
    else:
        parent, _, _, flags = layout.unpack_from(body)
        reference, leap, stratum = None, 0, 0
    if flags & ~(SYNC | SAMPLE):
        raise IcError(f"unknown time-sync flags 0x{flags:x}")
    return TimeMessage(parent, flags, reference, leap, stratum)
