"""HV_STATUS codes as a Python enum, and the exceptions that carry them.

The names and messages come from the core's one status table (native/hv_abi.h), so C and Python
can never disagree about them.
"""
from __future__ import annotations

import enum

from hypervisor import _binding

_TABLE = _binding.hv_status_table()
_MESSAGES = {code: message for code, _, message in _TABLE}

#: Every TLFS status the core knows, by its TLFS name (HvStatus.ACCESS_DENIED == 0x0006).
HvStatus = enum.IntEnum("HvStatus", [(name, code) for code, name, _ in _TABLE], module=__name__)
HvStatus.__doc__ = "A TLFS HV_STATUS code."
HvStatus.message = property(lambda self: _MESSAGES[int(self)])  # type: ignore[attr-defined]


_BY_CODE = {int(s): s for s in HvStatus}


def status_of(code: int) -> HvStatus | int:
    """The HvStatus for a raw code, or the bare int if the core never returns it."""
    return _BY_CODE.get(code, code)


class HvError(Exception):
    """A hypercall failed; `.status` is the HvStatus it returned, `.call` the call's name."""

    def __init__(self, status: HvStatus | int, call: str | None = None, detail: str | None = None):
        self.status = status_of(int(status))
        self.call = call
        name = getattr(self.status, "name", hex(int(status)))
        message = _MESSAGES.get(int(status), "unknown status")
        where = f"{call}: " if call else ""
        extra = f" ({detail})" if detail else ""
        super().__init__(f"{where}HV_STATUS_{name}: {message}{extra}")


class HvAccessDenied(HvError, PermissionError):
    """ACCESS_DENIED: the caller lacks the privilege."""


class HvInvalidParameter(HvError, ValueError):
    """INVALID_PARAMETER, INVALID_ALIGNMENT, INVALID_HYPERCALL_INPUT and the other bad-argument codes."""


class HvInsufficientMemory(HvError, MemoryError):
    """INSUFFICIENT_MEMORY: the partition's pool holds too few pages."""


class HvInvalidState(HvError, RuntimeError):
    """INVALID_PARTITION_STATE, INVALID_VP_STATE, INVALID_SYNIC_STATE, OBJECT_IN_USE."""


class HvNotFound(HvError, LookupError):
    """INVALID_PARTITION_ID, INVALID_VP_INDEX, INVALID_PORT_ID, INVALID_CONNECTION_ID, NOT_FOUND."""


_SUBCLASS = {
    "ACCESS_DENIED": HvAccessDenied,
    "INVALID_PARAMETER": HvInvalidParameter, "INVALID_ALIGNMENT": HvInvalidParameter,
    "INVALID_HYPERCALL_INPUT": HvInvalidParameter, "INVALID_HYPERCALL_CODE": HvInvalidParameter,
    "UNKNOWN_PROPERTY": HvInvalidParameter, "PROPERTY_VALUE_OUT_OF_RANGE": HvInvalidParameter,
    "INVALID_PROXIMITY_DOMAIN_INFO": HvInvalidParameter,
    "INSUFFICIENT_MEMORY": HvInsufficientMemory, "INSUFFICIENT_BUFFERS": HvInsufficientMemory,
    "INVALID_PARTITION_STATE": HvInvalidState, "INVALID_VP_STATE": HvInvalidState,
    "INVALID_SYNIC_STATE": HvInvalidState, "OBJECT_IN_USE": HvInvalidState,
    "INVALID_PARTITION_ID": HvNotFound, "INVALID_VP_INDEX": HvNotFound, "INVALID_PORT_ID": HvNotFound,
    "INVALID_CONNECTION_ID": HvNotFound, "NOT_FOUND": HvNotFound,
}


def error_for(status: int, call: str | None = None, detail: str | None = None) -> HvError:
    """The most specific HvError subclass for a failed status."""
    name = getattr(status_of(status), "name", "")
    return _SUBCLASS.get(name, HvError)(status, call, detail)
