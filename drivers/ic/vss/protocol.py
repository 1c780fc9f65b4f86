"""The VSS (backup) IC's wire format: the host asks the guest to freeze and thaw its file systems
around a backup point.

Body (hv_vss_msg, 12 bytes): operation u8, reserved[7], then flags u32 (hv_vss_check_feature /
hv_vss_check_dm_info). FREEZE and THAW exist from service version 5.0.
"""
from __future__ import annotations

import struct
import uuid

from drivers.ic.framing import IcError, Version

CLASS_ID = uuid.UUID("35fa2e29-ea23-4236-96ae-3a6ebacba440")
VERSIONS = (Version(7, 0), Version(6, 0), Version(5, 0), Version(4, 0))  # the host's (OpenVMM's)
GUEST_VERSIONS = (Version(5, 0),)                                         # Linux's
GUEST_FRAMEWORKS = (Version(3, 0),)
FREEZE_SINCE = Version(5, 0)

CREATE, DELETE, HOT_BACKUP, GET_DM_INFO, BU_COMPLETE, FREEZE, THAW, AUTO_RECOVER = range(8)
NO_AUTO_RECOVERY = 0x5  # VSS_HBU_NO_AUTO_RECOVERY, the one HOT_BACKUP flag Linux answers

_MESSAGE = struct.Struct("<B7xI")


def message(op: int, flags: int = 0) -> bytes:
    return _MESSAGE.pack(op, flags)


def parse(body: bytes) -> tuple[int, int]:
    """(operation, flags)."""
    if len(body) < _MESSAGE.size:
        raise IcError(f"a VSS message is {_MESSAGE.size} bytes, got {len(body)}")
    return _MESSAGE.unpack_from(body)
