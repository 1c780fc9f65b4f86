"""The synthetic interrupt controller as a guest sees it: HV_MESSAGE slots, message types, the
SINT/SIMP/SIEFP/STIMER register values, and the guest's side of the message and event-flag pages.

Every number comes from the compiled core (native/hv_abi.h, TLFS layouts). The page helpers act
on a partition's own memory with ordinary loads and stores (`Partition.read` / `write`), the way
guest code does; EOM and the other registers go through SetVpRegisters.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from hypervisor import _binding
from hypervisor.abi import PAGE_SIZE

if TYPE_CHECKING:
    from hypervisor.partition import Partition

_c = _binding.constant

SINT_COUNT = _c("HV_SYNIC_SINT_COUNT")
STIMER_COUNT = _c("HV_SYNIC_STIMER_COUNT")
SYNIC_VERSION = _c("HV_SYNIC_VERSION")
MIN_VECTOR = _c("HV_SYNIC_MIN_VECTOR")
MESSAGE_SIZE = _c("HV_MESSAGE_SIZE")
PAYLOAD_MAX = _c("HV_MESSAGE_PAYLOAD_MAX")
EVENT_FLAGS_BYTES = _c("HV_EVENT_FLAGS_BYTES")
EVENT_FLAGS_COUNT = _c("HV_EVENT_FLAGS_COUNT")
PORT_MESSAGE_BUFFERS = _c("HV_PORT_MESSAGE_BUFFERS")
PORT_ID_MASK = _c("HV_PORT_ID_MASK")

SINT_MASKED = _c("HV_SINT_MASKED")
SINT_AUTO_EOI = _c("HV_SINT_AUTO_EOI")
SINT_POLLING = _c("HV_SINT_POLLING")
SINT_RESET = _c("HV_SINT_RESET")
SCONTROL_ENABLE = _c("HV_SCONTROL_ENABLE")
MESSAGE_FLAG_PENDING = _c("HV_MESSAGE_FLAG_PENDING")

STIMER_ENABLE = _c("HV_STIMER_ENABLE")
STIMER_PERIODIC = _c("HV_STIMER_PERIODIC")
STIMER_LAZY = _c("HV_STIMER_LAZY")
STIMER_AUTO_ENABLE = _c("HV_STIMER_AUTO_ENABLE")
STIMER_DIRECT_MODE = _c("HV_STIMER_DIRECT_MODE")
STIMER_SINTX_SHIFT = _c("HV_STIMER_SINTX_SHIFT")

_MESSAGE_TYPES = [
    "NONE", "VMBUS", "UNMAPPED_GPA", "GPA_INTERCEPT", "UNACCEPTED_GPA", "GPA_ATTRIBUTE_INTERCEPT",
    "TIMER_EXPIRED", "INVALID_VP_REGISTER_VALUE", "UNRECOVERABLE_EXCEPTION", "UNSUPPORTED_FEATURE",
    "OPAQUE_INTERCEPT", "EVENT_LOG_BUFFER_COMPLETE", "HYPERCALL_INTERCEPT", "SYNIC_EVENT_INTERCEPT",
    "SYNIC_SINT_INTERCEPT", "SYNIC_SINT_DELIVERABLE", "ASYNC_CALL_COMPLETION", "INSUFFICIENT_MEMORY",
    "SCHEDULER_VP_SIGNAL_BITSET", "SCHEDULER_VP_SIGNAL_PAIR", "X64_IO_PORT_INTERCEPT", "MSR_INTERCEPT",
    "X64_CPUID_INTERCEPT", "EXCEPTION_INTERCEPT", "X64_APIC_EOI", "REGISTER_INTERCEPT", "X64_HALT",
    "X64_INTERRUPTION_DELIVERABLE", "X64_SIPI_INTERCEPT"]

#: HV_MESSAGE_TYPE. Types with bit 31 set belong to the hypervisor; VMBUS (1) is what VMBus uses.
MessageType = enum.IntEnum("MessageType", [(n, _c("HV_MESSAGE_TYPE_" + n)) for n in _MESSAGE_TYPES],
                           module=__name__)
MESSAGE_TYPE_HYPERVISOR_MASK = _c("HV_MESSAGE_TYPE_HYPERVISOR_MASK")

#: HV_PORT_TYPE.
PortType = enum.IntEnum("PortType", [(n, _c("HV_PORT_TYPE_" + n)) for n in ("MESSAGE", "EVENT", "MONITOR")],
                        module=__name__)


def stimer_config_register(n: int) -> int:
    """HV_REGISTER_NAME of STIMERn_CONFIG."""
    if not 0 <= n < STIMER_COUNT:
        raise ValueError(f"timer {n}: expected 0..{STIMER_COUNT - 1}")
    return _c("HV_REGISTER_STIMER0_CONFIG") + 2 * n


def stimer_count_register(n: int) -> int:
    """HV_REGISTER_NAME of STIMERn_COUNT."""
    return stimer_config_register(n) + 1


# ---- register values ----------------------------------------------------------------------------

def sint_value(vector: int, masked: bool = False, auto_eoi: bool = False, polling: bool = False) -> int:
    """A SINTn value: vector 7:0, masked 16, AutoEOI 17, polling 18."""
    if not 0 <= vector <= 0xFF:
        raise ValueError(f"vector {vector}: expected 0..255")
    return vector | masked * SINT_MASKED | auto_eoi * SINT_AUTO_EOI | polling * SINT_POLLING


def _page_value(gpfn: int, enable: bool) -> int:
    if not 0 <= gpfn < 1 << 52:
        raise ValueError(f"GPFN {gpfn:#x} does not fit in bits 63:12")
    return gpfn << 12 | int(enable)


def simp_value(gpfn: int, enable: bool = True) -> int:
    """A SIMP value naming the message page at GPA page `gpfn`."""
    return _page_value(gpfn, enable)


def siefp_value(gpfn: int, enable: bool = True) -> int:
    """A SIEFP value naming the event-flags page at GPA page `gpfn`."""
    return _page_value(gpfn, enable)


def stimer_config_value(sint: int, *, enable: bool = True, periodic: bool = False, lazy: bool = False,
                        auto_enable: bool = False) -> int:
    """A STIMERn_CONFIG value delivering TimerExpired messages to SINT `sint` (not direct mode)."""
    if not 0 <= sint < SINT_COUNT:
        raise ValueError(f"SINT {sint}: expected 0..{SINT_COUNT - 1}")
    return (enable * STIMER_ENABLE | periodic * STIMER_PERIODIC | lazy * STIMER_LAZY
            | auto_enable * STIMER_AUTO_ENABLE | sint << STIMER_SINTX_SHIFT)


# ---- HV_MESSAGE ------------------------------------------------------------------------------------

_HEADER = struct.Struct("<IBBHQ")  # MessageType, PayloadSize, MessageFlags, Reserved, OriginationId


class TimerExpired(NamedTuple):
    """The payload of a TimerExpired message (times in 100 ns reference-time units)."""

    timer_index: int
    expiration_time: int
    delivery_time: int


@dataclass(frozen=True)
class HvMessage:
    """One 256-byte HV_MESSAGE (a SIM slot)."""

    message_type: MessageType | int
    payload_size: int
    pending: bool       # MessageFlags.MessagePending
    origin: int         # OriginationId: the sender's port id, 0 for timers
    payload: bytes      # the first payload_size bytes

    @property
    def empty(self) -> bool:
        return self.message_type == MessageType.NONE

    @classmethod
    def parse(cls, slot: bytes) -> HvMessage:
        """Decode a slot. A PayloadSize above 240 is malformed (ValueError): no honest sender
        produces it, and a reader must never trust it as a length."""
        if len(slot) != MESSAGE_SIZE:
            raise ValueError(f"an HV_MESSAGE is {MESSAGE_SIZE} bytes, got {len(slot)}")
        mtype, size, flags, _, origin = _HEADER.unpack_from(slot)
        if size > PAYLOAD_MAX:
            raise ValueError(f"PayloadSize {size} exceeds {PAYLOAD_MAX}")
        try:
            mtype = MessageType(mtype)
        except ValueError:
            pass
        return cls(mtype, size, bool(flags & MESSAGE_FLAG_PENDING), origin,
                   bytes(slot[_HEADER.size:_HEADER.size + size]))

    def timer(self) -> TimerExpired:
        """The TimerExpired payload (ValueError for any other message)."""
        if self.message_type != MessageType.TIMER_EXPIRED or self.payload_size < 24:
            raise ValueError(f"not a TimerExpired message: {self.message_type!r}")
        index, _, expiration, delivery = struct.unpack_from("<IIQQ", self.payload)
        return TimerExpired(index, expiration, delivery)


def _check_sint(sint: int) -> None:
    if not 0 <= sint < SINT_COUNT:
        raise ValueError(f"SINT {sint}: expected 0..{SINT_COUNT - 1}")


# ---- the guest's side of the pages -------------------------------------------------------------------

def read_message_slot(partition: Partition, simp_gpfn: int, sint: int) -> HvMessage:
    """Load SINT `sint`'s slot from the message page at GPA page `simp_gpfn`."""
    _check_sint(sint)
    return HvMessage.parse(partition.read(simp_gpfn * PAGE_SIZE + sint * MESSAGE_SIZE, MESSAGE_SIZE))


def clear_message_slot(partition: Partition, simp_gpfn: int, sint: int) -> bool:
    """What a guest does once it has copied a message out: store MessageType = None, then look at
    MessagePending. Returns it: when True the guest must write EOM for the next message."""
    _check_sint(sint)
    gpa = simp_gpfn * PAGE_SIZE + sint * MESSAGE_SIZE
    partition.write(gpa, bytes(4))
    return bool(partition.read(gpa + 5, 1)[0] & MESSAGE_FLAG_PENDING)


def _flag_location(siefp_gpfn: int, sint: int, flag: int) -> tuple[int, int]:
    _check_sint(sint)
    if not 0 <= flag < EVENT_FLAGS_COUNT:
        raise ValueError(f"flag {flag}: expected 0..{EVENT_FLAGS_COUNT - 1}")
    return siefp_gpfn * PAGE_SIZE + sint * EVENT_FLAGS_BYTES + flag // 8, 1 << flag % 8


def event_flag_set(partition: Partition, siefp_gpfn: int, sint: int, flag: int) -> bool:
    """Whether event flag `flag` of SINT `sint` is set in the event-flags page."""
    gpa, bit = _flag_location(siefp_gpfn, sint, flag)
    return bool(partition.read(gpa, 1)[0] & bit)


def clear_event_flag(partition: Partition, siefp_gpfn: int, sint: int, flag: int) -> bool:
    """Clear one event flag (a guest's locked AND); returns whether it was set."""
    gpa, bit = _flag_location(siefp_gpfn, sint, flag)
    byte = partition.read(gpa, 1)[0]
    partition.write(gpa, bytes([byte & ~bit & 0xFF]))
    return bool(byte & bit)


# ---- introspection (the host's owner's view, not the guest's) ---------------------------------------

def queue_length(partition: Partition, vp_index: int, sint: int) -> int:
    """Messages the hypervisor holds for SINT `sint` of one of the partition's VPs."""
    return _binding.hv_synic_queue_length(partition.host._h, partition.id, vp_index, sint)


def interrupt_count(partition: Partition, vp_index: int, sint: int) -> int:
    """Interrupts the SynIC has raised on SINT `sint` of that VP since the VP was created."""
    return _binding.hv_synic_interrupt_count(partition.host._h, partition.id, vp_index, sint)


def timer_state(partition: Partition, vp_index: int, timer: int) -> dict:
    """due_ns, armed, pending of synthetic timer `timer` of that VP."""
    return _binding.hv_synic_timer_state(partition.host._h, partition.id, vp_index, timer)


def port_undelivered(partition: Partition, port_id: int) -> int:
    """Messages posted to the partition's port `port_id` not yet copied into a SIM slot."""
    return _binding.hv_port_undelivered(partition.host._h, partition.id, port_id)


def port_counts(partition: Partition) -> tuple[int, int]:
    """(ports, connections) the partition owns."""
    return _binding.hv_port_counts(partition.host._h, partition.id)


def connection_target(partition: Partition, connection_id: int) -> tuple[int, int] | None:
    """(port partition id, port id) of one of the partition's connections; None if it dangles."""
    return _binding.hv_connection_target(partition.host._h, partition.id, connection_id)
