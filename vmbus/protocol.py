"""The VMBus channel-management protocol, byte for byte: one table of the messages hvsim uses
(id, name, direction, minimum version, size, layout), their dataclasses with encode/decode, the
version and connection constants, and GPADL range encoding, splitting and reassembly.

Wire facts are from reference/hyperv-abi.md §3 (little-endian; offsets include the 8-byte
header: msgtype u32 @0, padding u32 @4). A message travels as the payload of one SynIC message
of type VMBUS_MESSAGE_TYPE, so it is at most MAX_MESSAGE_SIZE (240) bytes.

decode() treats its input as hostile: it copies the bytes once, reads nothing past them, and
raises ProtocolError (a ValueError) for anything short, unknown, oversized or out of range, and
nothing else. Reserved and padding bytes are not part of the layouts: decode ignores them and
encode writes zeros, so decode(encode(m)) == m but encode(decode(b)) may differ from b there.
"""
from __future__ import annotations

import enum
import struct
import uuid
from dataclasses import dataclass, fields
from functools import partial
from typing import Any, Callable, ClassVar, Iterable, Sequence

# -- versions (major << 16 | minor) --------------------------------------------------------------

VERSION_WS2008 = 0x0000000D
VERSION_WIN7 = 0x00010001
VERSION_WIN8 = 0x00020004
VERSION_WIN8_1 = 0x00030000
VERSION_WIN10 = 0x00040000
VERSION_WIN10_V4_1 = 0x00040001
VERSION_WIN10_V5 = 0x00050000
VERSION_WIN10_V5_1 = 0x00050001
VERSION_WIN10_V5_2 = 0x00050002
VERSION_WIN10_V5_3 = 0x00050003

# What hvsim speaks, newest first (the order a guest tries them in). WS2008/Win7 are left out,
# as in Linux: they signal through the shared interrupt page instead of per-relid event flags.
SUPPORTED_VERSIONS = (
    VERSION_WIN10_V5_3,
    VERSION_WIN10_V5_2,
    VERSION_WIN10_V5_1,
    VERSION_WIN10_V5,
    VERSION_WIN10_V4_1,
    VERSION_WIN10,
    VERSION_WIN8_1,
    VERSION_WIN8,
)

# -- transport -----------------------------------------------------------------------------------

VMBUS_MESSAGE_TYPE = 1  # SynIC message type of every channel-management message, both ways
VMBUS_MESSAGE_SINT = 2  # host -> guest messages arrive on this SINT
VMBUS_MESSAGE_CONNECTION_ID = 1  # guest -> host, versions < 5.0
VMBUS_MESSAGE_CONNECTION_ID_4 = 4  # InitiateContact for versions >= 5.0
VMBUS_EVENT_CONNECTION_ID = 2
VMBUS_MONITOR_CONNECTION_ID = 3
MAX_MESSAGE_SIZE = 240  # SynIC payload
HEADER_SIZE = 8
PAGE_SIZE = 4096
MAX_RELID = 2047  # relids index the 2048 event flags of the VMBus SINT; 0 is never assigned
INVALID_RELID = 0xFFFFFFFF
MAX_MONITOR_ID = 127  # 4 trigger groups of 32
MAX_PFN = (1 << 40) - 1  # 52-bit guest physical addresses
MAX_SINT = 15

STATUS_SUCCESS = 0
STATUS_UNSUCCESSFUL = 0xC0000001  # NTSTATUS; what hvsim reports for a refused GPADL or open

# Offer flags (chn_flags).
OFFER_FLAG_ENUMERATE_DEVICE_INTERFACE = 0x1
OFFER_FLAG_NAMED_PIPE_MODE = 0x10
OFFER_FLAG_REQUEST_MONITORED_NOTIFICATION = 0x400

USER_DEFINED_SIZE = 120
GPADL_HEADER_MAX_WORDS = (MAX_MESSAGE_SIZE - 20) // 8  # 27: one range word + 26 PFNs
GPADL_BODY_MAX_WORDS = (MAX_MESSAGE_SIZE - 16) // 8  # 28 PFNs
GPADL_MAX_WORDS = 0xFFFF // 8  # range_buflen is a u16


class ConnectionState(enum.IntEnum):
    """VersionResponse.connection_state."""

    SUCCESSFUL = 0
    FAILED_LOW_RESOURCES = 1
    FAILED_UNKNOWN_FAILURE = 2


_CONNECTION_STATES = frozenset(ConnectionState)


class Direction(enum.Enum):
    HOST_TO_GUEST = "host->guest"
    GUEST_TO_HOST = "guest->host"


H2G, G2H = Direction.HOST_TO_GUEST, Direction.GUEST_TO_HOST


class ProtocolError(ValueError):
    """A message (or a GPADL description) that is short, unknown, oversized or out of range."""


class GpadlError(ProtocolError):
    """A GPADL whose header, bodies and ranges do not agree."""


def message_connection_id(version: int) -> int:
    """The connection a guest sends InitiateContact for `version` to."""
    if version >= VERSION_WIN10_V5:
        return VMBUS_MESSAGE_CONNECTION_ID_4
    return VMBUS_MESSAGE_CONNECTION_ID


# -- field kinds ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """How one field goes on the wire: a struct format, conversions, and a range check."""

    name: str
    fmt: str
    to_wire: Callable[[Any], Any] = lambda v: v
    from_wire: Callable[[Any], Any] = lambda v: v
    check: Callable[[Any], bool] = lambda v: True

    @property
    def size(self) -> int:
        return struct.calcsize("<" + self.fmt)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _uint(bits: int, fmt: str) -> Kind:
    limit = 1 << bits
    # _is_int, with a plain int (nearly every value) decided without a call
    return Kind(f"u{bits}", fmt, check=lambda v: (type(v) is int or _is_int(v)) and 0 <= v < limit)


def _raw(n: int) -> Kind:
    return Kind(f"bytes[{n}]", f"{n}s", check=lambda v: isinstance(v, bytes) and len(v) == n)


U8, U16, U32, U64 = _uint(8, "B"), _uint(16, "H"), _uint(32, "I"), _uint(64, "Q")
GUID = Kind(
    "guid", "16s", lambda v: v.bytes_le, lambda b: uuid.UUID(bytes_le=b),
    lambda v: isinstance(v, uuid.UUID),
)  # Microsoft mixed-endian GUID
RELID = Kind("relid", "I", check=lambda v: (type(v) is int or _is_int(v)) and 1 <= v <= MAX_RELID)
BOOL8 = Kind("bool8", "B", int, lambda b: b != 0, lambda v: isinstance(v, bool))  # non-zero
FLAG8 = Kind("flag8", "B", int, lambda b: bool(b & 1), lambda v: isinstance(v, bool))  # bit 0
FLAG16 = Kind("flag16", "H", int, lambda b: bool(b & 1), lambda v: isinstance(v, bool))
USER_DEF = _raw(USER_DEFINED_SIZE)


@dataclass(frozen=True)
class Field:
    name: str
    offset: int
    kind: Kind


@dataclass(frozen=True)
class MessageSpec:
    """One row of the message table. `size` is the fixed part (header included), which is also
    the minimum size; `tail` names a trailing u64 array running from `size` to the message end."""

    id: int
    name: str
    direction: Direction
    min_version: int  # 0: valid before any version is negotiated
    size: int
    layout: tuple[Field, ...]
    tail: str | None = None

    @property
    def max_tail_words(self) -> int:
        return (MAX_MESSAGE_SIZE - self.size) // 8 if self.tail else 0


# -- messages ------------------------------------------------------------------------------------


class Message:
    """Base of every message dataclass: encode() through the table, checks on construction."""

    spec: ClassVar[MessageSpec]
    # Compiled from `spec` by _compile: the fixed part's struct (header and reserved bytes
    # included), its fields' names in that order, the conversions of those that have one, and
    # (name, kind, check) of every field for __post_init__.
    _pack: ClassVar[Callable[..., bytes]]
    _unpack: ClassVar[Callable[..., tuple]]
    _names: ClassVar[tuple[str, ...]]
    _to_wire: ClassVar[tuple[tuple[int, Callable], ...]]
    _from_wire: ClassVar[tuple[tuple[int, Callable], ...]]
    _relids: ClassVar[tuple[int, ...]]
    _checks: ClassVar[tuple[tuple[str, Kind, Callable], ...]]

    def __post_init__(self) -> None:
        spec, values = self.spec, self.__dict__
        for name, kind, check in self._checks:
            value = values[name]
            if kind is USER_DEF and isinstance(value, (bytes, bytearray)):
                if len(value) > USER_DEFINED_SIZE:
                    raise ProtocolError(f"{spec.name}.{name}: {len(value)} bytes > 120")
                value = values[name] = bytes(value).ljust(USER_DEFINED_SIZE, b"\0")
            if not check(value):
                raise ProtocolError(f"{spec.name}.{name} = {value!r} is not a valid {kind.name}")
        if spec.tail:
            words = values[spec.tail] = tuple(values[spec.tail])
            if len(words) > spec.max_tail_words:
                raise ProtocolError(
                    f"{spec.name}: {len(words)} words > {spec.max_tail_words}"
                )
            if not _all_u64(words):
                raise ProtocolError(f"{spec.name}.{spec.tail}: not all u64")
        self._check()

    def _check(self) -> None:
        """Cross-field checks; raise ProtocolError."""

    def encode(self) -> bytes:
        """The message's bytes: the fixed part with one struct call (its layout compiled once
        per class by _compile: reserved bytes packed as zeros), then the tail's words."""
        values = self.__dict__
        fixed = [values[name] for name in self._names]
        for i, to_wire in self._to_wire:
            fixed[i] = to_wire(fixed[i])
        out = self._pack(*fixed)
        tail = self.spec.tail
        if tail and values[tail]:
            words = values[tail]
            return out + struct.pack(f"<{len(words)}Q", *words)
        return out

    @classmethod
    def decode(cls, raw) -> "Message":
        """decode() that also requires the message to be of this class."""
        msg = decode(raw)
        if not isinstance(msg, cls):
            raise ProtocolError(f"expected {cls.__name__}, got {type(msg).__name__}")
        return msg


@dataclass(frozen=True)
class OfferChannel(Message):
    interface_id: uuid.UUID
    instance_id: uuid.UUID
    child_relid: int
    flags: int = 0
    mmio_megabytes: int = 0
    user_def: bytes = bytes(USER_DEFINED_SIZE)
    sub_channel_index: int = 0
    monitor_id: int = 0
    monitor_allocated: bool = False
    is_dedicated_interrupt: bool = False
    connection_id: int = 0

    def _check(self) -> None:
        if self.monitor_allocated and self.monitor_id > MAX_MONITOR_ID:
            raise ProtocolError(f"monitor id {self.monitor_id} > {MAX_MONITOR_ID}")


@dataclass(frozen=True)
class RescindChannelOffer(Message):
    child_relid: int


@dataclass(frozen=True)
class RequestOffers(Message):
    pass


@dataclass(frozen=True)
class AllOffersDelivered(Message):
    pass


@dataclass(frozen=True)
class OpenChannel(Message):
    child_relid: int
    open_id: int
    ring_gpadl_id: int
    target_vp: int
    downstream_page_offset: int  # pages; the host->guest ring starts here, guest->host at 0
    user_data: bytes = bytes(USER_DEFINED_SIZE)


@dataclass(frozen=True)
class OpenResult(Message):
    child_relid: int
    open_id: int
    status: int  # 0 = success


@dataclass(frozen=True)
class CloseChannel(Message):
    child_relid: int


@dataclass(frozen=True)
class GpadlHeader(Message):
    """The first message of a GPADL: its totals and the first words of the range buffer (see
    GpaRange.words); GpadlBody messages carry the rest."""

    child_relid: int
    gpadl_id: int
    range_buflen: int  # bytes of the whole range buffer, header and bodies together
    rangecount: int
    data: tuple[int, ...] = ()


@dataclass(frozen=True)
class GpadlBody(Message):
    msgnumber: int  # not interpreted (OpenVMM: reserved)
    gpadl_id: int
    data: tuple[int, ...] = ()


@dataclass(frozen=True)
class GpadlCreated(Message):
    child_relid: int
    gpadl_id: int
    creation_status: int  # 0 = success


@dataclass(frozen=True)
class GpadlTeardown(Message):
    child_relid: int
    gpadl_id: int


@dataclass(frozen=True)
class GpadlTorndown(Message):
    gpadl_id: int


@dataclass(frozen=True)
class RelidReleased(Message):
    child_relid: int


@dataclass(frozen=True)
class InitiateContact(Message):
    """`interrupt_page` is a union on the wire: below 5.0 the GPA of the interrupt page; from
    5.0 on msg_sint u8 @16, msg_vtl u8 @17, reserved u16, feature_flags u32 @20 (see the
    properties and for_version)."""

    version_requested: int
    target_vcpu: int
    interrupt_page: int = 0
    monitor_page1: int = 0
    monitor_page2: int = 0

    @classmethod
    def for_version(
        cls, version: int, target_vcpu: int = 0, *, interrupt_page: int = 0,
        msg_sint: int = VMBUS_MESSAGE_SINT, monitor_page1: int = 0, monitor_page2: int = 0,
    ) -> "InitiateContact":
        if version >= VERSION_WIN10_V5:
            if not 0 <= msg_sint <= MAX_SINT:
                raise ProtocolError(f"msg_sint {msg_sint} out of range")
            interrupt_page = msg_sint
        return cls(version, target_vcpu, interrupt_page, monitor_page1, monitor_page2)

    @property
    def msg_sint(self) -> int:
        """The SINT host->guest messages go to (only from 5.0 on; before, VMBUS_MESSAGE_SINT)."""
        if self.version_requested >= VERSION_WIN10_V5:
            return self.interrupt_page & 0xFF
        return VMBUS_MESSAGE_SINT

    @property
    def msg_vtl(self) -> int:
        return (self.interrupt_page >> 8) & 0xFF if self.version_requested >= VERSION_WIN10_V5 else 0

    @property
    def feature_flags(self) -> int:
        return self.interrupt_page >> 32 if self.version_requested >= VERSION_WIN10_V5 else 0

    def _check(self) -> None:
        if self.msg_sint > MAX_SINT:
            raise ProtocolError(f"msg_sint {self.msg_sint} > {MAX_SINT}")


@dataclass(frozen=True)
class VersionResponse(Message):
    version_supported: bool
    connection_state: int = ConnectionState.SUCCESSFUL
    msg_conn_id: int = 0  # >= 5.0: the connection for later messages; else (OpenVMM) the version

    def _check(self) -> None:
        if self.connection_state not in _CONNECTION_STATES:
            raise ProtocolError(f"connection_state {self.connection_state} unknown")


@dataclass(frozen=True)
class ModifyChannel(Message):
    """The guest moves an open channel's host->guest interrupts to another VP (Linux sends it
    from 4.1 on when it changes a channel's target CPU)."""

    child_relid: int
    target_vp: int


@dataclass(frozen=True)
class ModifyChannelResponse(Message):
    """The host's answer to ModifyChannel, from 5.3 on (Linux waits for it there)."""

    child_relid: int
    status: int  # NTSTATUS, 0 = success


@dataclass(frozen=True)
class Unload(Message):
    pass


@dataclass(frozen=True)
class UnloadResponse(Message):
    pass


# -- the table -----------------------------------------------------------------------------------


def _all_u64(words: tuple) -> bool:
    """Every word a u64 (an int, not a bool), without a Python-level step per word."""
    return not words or (set(map(type, words)) == _INT_ONLY and min(words) >= 0 and max(words) < 1 << 64)


_INT_ONLY = {int}
_NO_TO_WIRE = Kind.__dataclass_fields__["to_wire"].default       # the default conversions: none
_NO_FROM_WIRE = Kind.__dataclass_fields__["from_wire"].default


def _compile(cls, spec: MessageSpec) -> None:
    """What encode, decode and __post_init__ use, once per class (see Message)."""
    fmt, end, names = "", HEADER_SIZE, []
    for f in sorted(spec.layout, key=lambda f: f.offset):
        fmt += (f"{f.offset - end}x" if f.offset > end else "") + f.kind.fmt
        end = f.offset + f.kind.size
        names.append(f.name)
    fmt += f"{spec.size - end}x" if spec.size > end else ""
    layout = struct.Struct("<I4x" + fmt)   # msgtype and the header's padding, then the fields
    assert layout.size == spec.size, spec.name
    kinds = {f.name: f.kind for f in spec.layout}
    cls._pack = partial(layout.pack, spec.id)
    cls._unpack = struct.Struct("<8x" + fmt).unpack_from
    cls._names = tuple(names)
    cls._to_wire = tuple((i, kinds[n].to_wire) for i, n in enumerate(names) if kinds[n].to_wire is not _NO_TO_WIRE)
    cls._from_wire = tuple((i, kinds[n].from_wire) for i, n in enumerate(names)
                           if kinds[n].from_wire is not _NO_FROM_WIRE)
    cls._relids = tuple(i for i, n in enumerate(names) if kinds[n] is RELID)
    cls._checks = tuple((f.name, f.kind, f.kind.check) for f in spec.layout)


def _row(id, cls, direction, min_version, size, *layout, tail=None) -> MessageSpec:
    spec = MessageSpec(id, cls.__name__, direction, min_version, size,
                       tuple(Field(*f) for f in layout), tail)
    cls.spec = spec
    _compile(cls, spec)
    return spec


_V1 = VERSION_WS2008

MESSAGES: tuple[MessageSpec, ...] = (
    _row(1, OfferChannel, H2G, _V1, 196,
         ("interface_id", 8, GUID), ("instance_id", 24, GUID),
         # 40..55 reserved (DPDK: interface latency, revision, server context size)
         ("flags", 56, U16), ("mmio_megabytes", 58, U16), ("user_def", 60, USER_DEF),
         ("sub_channel_index", 180, U16),  # 182: reserved (OpenVMM: mmio_megabytes_optional)
         ("child_relid", 184, RELID), ("monitor_id", 188, U8), ("monitor_allocated", 189, FLAG8),
         ("is_dedicated_interrupt", 190, FLAG16), ("connection_id", 192, U32)),
    _row(2, RescindChannelOffer, H2G, _V1, 12, ("child_relid", 8, RELID)),
    _row(3, RequestOffers, G2H, _V1, 8),
    _row(4, AllOffersDelivered, H2G, _V1, 8),
    _row(5, OpenChannel, G2H, _V1, 148,
         ("child_relid", 8, RELID), ("open_id", 12, U32), ("ring_gpadl_id", 16, U32),
         ("target_vp", 20, U32), ("downstream_page_offset", 24, U32), ("user_data", 28, USER_DEF)),
    _row(6, OpenResult, H2G, _V1, 20,
         ("child_relid", 8, RELID), ("open_id", 12, U32), ("status", 16, U32)),
    _row(7, CloseChannel, G2H, _V1, 12, ("child_relid", 8, RELID)),
    _row(8, GpadlHeader, G2H, _V1, 20,
         ("child_relid", 8, RELID), ("gpadl_id", 12, U32), ("range_buflen", 16, U16),
         ("rangecount", 18, U16), tail="data"),
    _row(9, GpadlBody, G2H, _V1, 16, ("msgnumber", 8, U32), ("gpadl_id", 12, U32), tail="data"),
    _row(10, GpadlCreated, H2G, _V1, 20,
         ("child_relid", 8, RELID), ("gpadl_id", 12, U32), ("creation_status", 16, U32)),
    _row(11, GpadlTeardown, G2H, _V1, 16, ("child_relid", 8, RELID), ("gpadl_id", 12, U32)),
    _row(12, GpadlTorndown, H2G, _V1, 12, ("gpadl_id", 8, U32)),
    _row(13, RelidReleased, G2H, _V1, 12, ("child_relid", 8, RELID)),
    _row(14, InitiateContact, G2H, 0, 40,
         ("version_requested", 8, U32), ("target_vcpu", 12, U32), ("interrupt_page", 16, U64),
         ("monitor_page1", 24, U64), ("monitor_page2", 32, U64)),
    _row(15, VersionResponse, H2G, 0, 16,
         ("version_supported", 8, BOOL8), ("connection_state", 9, U8), ("msg_conn_id", 12, U32)),
    _row(16, Unload, G2H, _V1, 8),
    _row(17, UnloadResponse, H2G, VERSION_WIN7, 8),
    _row(22, ModifyChannel, G2H, VERSION_WIN10_V4_1, 16, ("child_relid", 8, RELID), ("target_vp", 12, U32)),
    _row(24, ModifyChannelResponse, H2G, VERSION_WIN10_V5_3, 16,
         ("child_relid", 8, RELID), ("status", 12, U32)),
)

_BY_ID = {spec.id: spec for spec in MESSAGES}
_CLASS_BY_ID: dict[int, type[Message]] = {
    cls.spec.id: cls for cls in Message.__subclasses__()  # every class got its spec from _row
}


def _check_table() -> None:
    """The table and the dataclasses must agree; a mistake here is a bug, caught at import."""
    for spec in MESSAGES:
        cls = _CLASS_BY_ID[spec.id]
        names = [f.name for f in spec.layout] + ([spec.tail] if spec.tail else [])
        assert sorted(names) == sorted(f.name for f in fields(cls)), spec.name
        end = HEADER_SIZE
        for f in sorted(spec.layout, key=lambda f: f.offset):
            assert f.offset >= end, (spec.name, f.name)
            if f.kind.fmt in ("B", "H", "I", "Q"):  # numbers are naturally aligned
                assert f.offset % f.kind.size == 0, (spec.name, f.name)
            end = f.offset + f.kind.size
        assert end <= spec.size <= MAX_MESSAGE_SIZE, spec.name


_check_table()


_MSGTYPE = struct.Struct("<I").unpack_from


def decode(raw) -> Message:
    """Parse one message (the SynIC payload as the sender sized it) or raise ProtocolError."""
    data = bytes(memoryview(raw).cast("B"))  # one private copy: later reads see only it
    if len(data) < HEADER_SIZE:
        raise ProtocolError(f"{len(data)}-byte message is shorter than the header")
    if len(data) > MAX_MESSAGE_SIZE:
        raise ProtocolError(f"{len(data)}-byte message exceeds the {MAX_MESSAGE_SIZE}-byte payload")
    msgtype = _MSGTYPE(data)[0]
    spec = _BY_ID.get(msgtype)
    if spec is None:
        raise ProtocolError(f"unknown message type {msgtype}")
    if len(data) < spec.size:
        raise ProtocolError(f"{spec.name}: {len(data)} bytes, needs {spec.size}")
    cls = _CLASS_BY_ID[msgtype]
    fixed = list(cls._unpack(data))
    for i, from_wire in cls._from_wire:
        fixed[i] = from_wire(fixed[i])
    # What the wire gives is already what __post_init__ would make of it, and passes its checks
    # (every number is in its kind's range, a GUID is a UUID, user data has its 120 bytes, the
    # tail's words are u64s and fit), except a relid's range and the class's cross-field
    # _check: so the message is made without its constructor, and only those are checked.
    for i in cls._relids:
        if not 1 <= fixed[i] <= MAX_RELID:
            name = cls._names[i]
            raise ProtocolError(f"{spec.name}.{name} = {fixed[i]!r} is not a valid {RELID.name}")
    msg = _NEW(cls)
    values = msg.__dict__
    values.update(zip(cls._names, fixed))
    if spec.tail:
        # A partial trailing word is padding; whole words are the sender's to justify.
        n = (len(data) - spec.size) // 8
        values[spec.tail] = struct.unpack_from(f"<{n}Q", data, spec.size)
    if cls._check is not Message._check:   # a class with cross-field checks
        msg._check()
    return msg


_NEW = object.__new__


# -- GPADL ranges --------------------------------------------------------------------------------


def page_count(byte_offset: int, byte_count: int) -> int:
    """PFNs a range needs: the pages touched by [byte_offset, byte_offset + byte_count)."""
    return (byte_offset + byte_count + PAGE_SIZE - 1) // PAGE_SIZE


@dataclass(frozen=True)
class GpaRange:
    """One gpa_range: byte_count bytes starting byte_offset into the first of `pfns`. On the
    wire: u32 byte_count, u32 byte_offset (one u64 word), then one u64 per PFN."""

    byte_count: int
    byte_offset: int
    pfns: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "pfns", tuple(self.pfns))
        if not (type(self.byte_count) is int and 1 <= self.byte_count < 1 << 32):
            raise GpadlError(f"range byte_count {self.byte_count!r} not in [1, 2**32)")
        if not (type(self.byte_offset) is int and 0 <= self.byte_offset < PAGE_SIZE):
            raise GpadlError(f"range byte_offset {self.byte_offset!r} not in [0, 4096)")
        need = page_count(self.byte_offset, self.byte_count)
        if len(self.pfns) != need:
            raise GpadlError(f"range of {self.byte_count} bytes at +{self.byte_offset} needs "
                             f"{need} PFNs, has {len(self.pfns)}")
        pfns = self.pfns
        if not (set(map(type, pfns)) == _INT_ONLY and min(pfns) >= 0 and max(pfns) <= MAX_PFN):
            for pfn in pfns:   # which one (there is one: a range has at least one PFN)
                if not (type(pfn) is int and 0 <= pfn <= MAX_PFN):
                    raise GpadlError(f"PFN {pfn!r} out of range")

    @classmethod
    def whole_pages(cls, pfns: Sequence[int]) -> "GpaRange":
        """A range covering `pfns` entirely (what a ring GPADL is)."""
        return cls(len(pfns) * PAGE_SIZE, 0, tuple(pfns))

    def words(self) -> list[int]:
        return [self.byte_count | self.byte_offset << 32, *self.pfns]


def encode_ranges(ranges: Iterable[GpaRange]) -> list[int]:
    return [w for r in ranges for w in r.words()]


def decode_ranges(words: Sequence[int], rangecount: int) -> tuple[GpaRange, ...]:
    """Parse exactly `rangecount` ranges that use every word; raise GpadlError otherwise."""
    ranges, pos = [], 0
    for i in range(rangecount):
        if pos >= len(words):
            raise GpadlError(f"range buffer ends before range {i} of {rangecount}")
        byte_count, byte_offset = words[pos] & 0xFFFFFFFF, words[pos] >> 32
        if byte_offset >= PAGE_SIZE or byte_count == 0:
            raise GpadlError(f"range {i}: byte_count {byte_count}, byte_offset {byte_offset}")
        n = page_count(byte_offset, byte_count)
        if pos + 1 + n > len(words):
            raise GpadlError(f"range {i} needs {n} PFNs, {len(words) - pos - 1} words left")
        ranges.append(GpaRange(byte_count, byte_offset, words[pos + 1 : pos + 1 + n]))
        pos += 1 + n
    if pos != len(words):
        raise GpadlError(f"{len(words) - pos} words left after {rangecount} ranges")
    return tuple(ranges)


def split_gpadl(relid: int, gpadl_id: int, ranges: Sequence[GpaRange]) -> list[Message]:
    """The messages that create a GPADL: one GpadlHeader, then as many GpadlBody as needed."""
    if not ranges:
        raise GpadlError("a GPADL needs at least one range")
    words = encode_ranges(ranges)
    if len(words) > GPADL_MAX_WORDS or len(ranges) > 0xFFFF:
        raise GpadlError(f"{len(words)} words do not fit a u16 range_buflen")
    first = words[:GPADL_HEADER_MAX_WORDS]
    messages: list[Message] = [GpadlHeader(relid, gpadl_id, 8 * len(words), len(ranges), first)]
    for n, start in enumerate(range(len(first), len(words), GPADL_BODY_MAX_WORDS), start=1):
        messages.append(GpadlBody(n, gpadl_id, words[start : start + GPADL_BODY_MAX_WORDS]))
    return messages


class GpadlAssembler:
    """Collects one GPADL from its header and bodies.

    The header announces range_buflen (the whole range buffer, in bytes) and rangecount; header
    and bodies then contribute u64 words until range_buflen/8 have arrived. Words past that
    point are tolerated only as zero padding (some guests pad, per OpenVMM); any non-zero excess
    is an overflow. Every inconsistency raises GpadlError, and after one the assembler is dead:
    no partial GPADL is ever usable.
    """

    def __init__(self, header: GpadlHeader):
        if header.rangecount == 0:
            raise GpadlError("rangecount 0")
        if header.range_buflen % 8:
            raise GpadlError(f"range_buflen {header.range_buflen} is not a multiple of 8")
        if header.range_buflen < 16 * header.rangecount:
            raise GpadlError(f"range_buflen {header.range_buflen} < 16 * {header.rangecount} ranges")
        self.relid = header.child_relid
        self.gpadl_id = header.gpadl_id
        self.rangecount = header.rangecount
        self.expected = header.range_buflen // 8
        self.words: list[int] = []
        self._take(header.data)

    @property
    def complete(self) -> bool:
        return len(self.words) == self.expected

    def add(self, body: GpadlBody) -> bool:
        """Append a body's words; return whether the GPADL is now complete."""
        if self.complete:
            raise GpadlError(f"body for GPADL {self.gpadl_id:#x}, which is already complete")
        self._take(body.data)
        return self.complete

    def ranges(self) -> tuple[GpaRange, ...]:
        if not self.complete:
            raise GpadlError(f"GPADL {self.gpadl_id:#x} is incomplete")
        return decode_ranges(self.words, self.rangecount)

    def _take(self, data: Sequence[int]) -> None:
        room = self.expected - len(self.words)
        if any(data[room:]):
            raise GpadlError(f"GPADL {self.gpadl_id:#x}: {len(data)} words, room for {room}")
        self.words.extend(data[:room])
