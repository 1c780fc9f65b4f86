"""The vstor wire format that storvsc and storvsp speak (reference/hyperv-abi.md §6.1), the SCSI
commands and sense data carried in it, and the GPA-direct range list that names data buffers.

Every packet payload is one 64-byte vstor_packet (little-endian):

    0  operation u32   4  flags u32 (REQUEST_COMPLETION_FLAG)   8  status u32 (an NTSTATUS)
   12  a 52-byte union: vmscsi_request (EXECUTE_SRB and its completion), channel properties
       (QUERY_PROPERTIES), protocol version (QUERY_PROTOCOL_VERSION)

vmscsi_request (52 bytes, the Win8 "V2" layout; hvsim negotiates Win8 and later only):

    0 length u16   2 srb_status u8   3 scsi_status u8   4 port u8   5 path_id u8   6 target_id u8
    7 lun u8   8 cdb_length u8   9 sense_info_length u8   10 data_in u8 (0 write, 1 read,
    2 unknown)   11 reserved u8   12 data_transfer_length u32   16 cdb[16] | sense_data[20]
   36 reserve u16   38 queue_tag u8   39 queue_action u8   40 srb_flags u32
   44 time_out_value u32   48 queue_sort_key u32

Data: an EXECUTE_SRB that moves data is a GPA-direct packet (VMBus type 9), laid out as Linux's
storvsc sends it (vmbus_sendpacket_mpb_desc): after the 16-byte descriptor comes the range list

    0 reserved u32   4 range_count u32   8 ranges: {byte_count u32, byte_offset u32, pfn u64[n]}

and the descriptor's offset8 counts it ((16 + 8 + 8 + 8 * n) / 8 for Linux's one range), so the
packet's payload proper is the 64-byte vstor_packet alone. The ring hands the range list to a
reader as Packet.header. A range's PFN count is the number of pages [byte_offset, byte_offset +
byte_count) touches.

A parent reaches only the child pages the child granted it (GPADLs) or made host-visible. The
ranges of an EXECUTE_SRB name guest pages directly, so they must lie in pages the guest made
host-visible with HvCallModifySparseGpaPageHostVisibility, wherever they are in its memory:
storvsc bounces its I/O through pages it marked so, exactly as a confidential (isolated) Linux
guest bounces storvsc I/O through the swiotlb pages it shared with the host (hv_mark_gpa_visibility
in arch/x86/hyperv/ivm.c). The wire format is Linux's and Hyper-V's; nothing is announced.

decode_* treat their input as hostile: they read nothing past it and raise StorError (a
ValueError) for anything short or out of range, and nothing else.
"""
from __future__ import annotations

import enum
import struct
import uuid
from dataclasses import dataclass

from vmbus.protocol import MAX_PFN, PAGE_SIZE, GpaRange, page_count

CLASS_ID = uuid.UUID("ba6163d9-04a1-4d29-b605-72e2ffb1dc7f")  # Hyper-V synthetic SCSI controller

# -- versions (major << 8 | minor) ---------------------------------------------------------------

VERSION_WIN8 = 0x0501
VERSION_WIN8_1 = 0x0600
VERSION_WIN10 = 0x0602
VERSIONS = (VERSION_WIN10, VERSION_WIN8_1, VERSION_WIN8)  # newest first, as Linux offers them


class Operation(enum.IntEnum):
    COMPLETE_IO = 1
    REMOVE_DEVICE = 2
    EXECUTE_SRB = 3
    RESET_LUN = 4
    RESET_ADAPTER = 5
    RESET_BUS = 6
    BEGIN_INITIALIZATION = 7
    END_INITIALIZATION = 8
    QUERY_PROTOCOL_VERSION = 9
    QUERY_PROPERTIES = 10
    ENUMERATE_BUS = 11
    FCHBA_DATA = 12
    CREATE_SUB_CHANNELS = 13
    EVENT_NOTIFICATION = 14


REQUEST_COMPLETION_FLAG = 0x1
PKT_GPA_DIRECT = 9  # VMBus packet type of a GPA-direct packet (vmbus.ring names 6 and 0xB only)


class NtStatus(enum.IntEnum):
    """The vstor_packet status values storvsp uses (OpenVMM's set)."""

    SUCCESS = 0x00000000
    BUFFER_OVERFLOW = 0x80000005
    DEVICE_BUSY = 0x80000011
    UNSUCCESSFUL = 0xC0000001
    INVALID_PARAMETER = 0xC000000D
    INVALID_DEVICE_REQUEST = 0xC0000010
    REVISION_MISMATCH = 0xC0000059
    IO_TIMEOUT = 0xC00000B5
    DEVICE_DOES_NOT_EXIST = 0xC00000C0
    CANCELLED = 0xC0000120
    INVALID_DEVICE_STATE = 0xC0000184
    IO_DEVICE_ERROR = 0xC0000185


class SrbStatus(enum.IntEnum):
    """SRB status (low 6 bits of srb_status; Windows srb.h)."""

    PENDING = 0x00
    SUCCESS = 0x01
    ABORTED = 0x02
    ERROR = 0x04
    BUSY = 0x05
    INVALID_REQUEST = 0x06
    DATA_OVERRUN = 0x12
    INVALID_LUN = 0x20
    INTERNAL_ERROR = 0x30


SRB_STATUS_AUTOSENSE_VALID = 0x80
SRB_STATUS_QUEUE_FROZEN = 0x40
SRB_STATUS_MASK = 0x3F


_NTSTATUS_FOR = {
    SrbStatus.SUCCESS: NtStatus.SUCCESS,
    SrbStatus.BUSY: NtStatus.DEVICE_BUSY,
    SrbStatus.INVALID_LUN: NtStatus.DEVICE_DOES_NOT_EXIST,
    SrbStatus.DATA_OVERRUN: NtStatus.BUFFER_OVERFLOW,
    SrbStatus.ABORTED: NtStatus.CANCELLED,
    SrbStatus.INVALID_REQUEST: NtStatus.INVALID_DEVICE_REQUEST,
}


def ntstatus_for(srb_status: int) -> NtStatus:
    """The vstor status storvsp sends with an SRB completion (as OpenVMM maps it)."""
    return _NTSTATUS_FOR.get(srb_status & SRB_STATUS_MASK, NtStatus.IO_DEVICE_ERROR)


class ScsiStatus(enum.IntEnum):
    GOOD = 0x00
    CHECK_CONDITION = 0x02
    BUSY = 0x08


# vmscsi_request.data_in
DATA_OUT, DATA_IN, DATA_UNKNOWN = 0, 1, 2
# vmscsi_request.srb_flags (the ones storvsc sets)
SRB_FLAGS_DISABLE_SYNCH_TRANSFER = 0x00000008
SRB_FLAGS_DATA_IN = 0x00000040
SRB_FLAGS_DATA_OUT = 0x00000080

PACKET_SIZE = 64
REQUEST_SIZE = 52  # vmscsi_request, "V2"
UNION_SIZE = PACKET_SIZE - 12
CDB_SIZE = 16
SENSE_BUFFER_SIZE = 20
PROPERTIES_FLAG_MULTI_CHANNEL = 0x1

_HEADER = struct.Struct("<III")
_REQUEST = struct.Struct("<HBBBBBBBBBBI20sHBBIII")
_PROPERTIES = struct.Struct("<IHHIIQ")
_VERSION = struct.Struct("<HH")
_GPA_HEADER = struct.Struct("<II")
_RANGE = struct.Struct("<IIQ")  # one range with its first PFN; more PFNs follow as u64s
_U64 = struct.Struct("<Q")
# A whole vstor_packet carrying a vmscsi_request: the per-I/O packets are packed and unpacked in
# one call (the same bytes as VstorPacket(..., ScsiRequest(...).encode()).encode()).
_SRB_PACKET = struct.Struct("<III" + _REQUEST.format[1:])
assert _HEADER.size + UNION_SIZE == PACKET_SIZE and _REQUEST.size == REQUEST_SIZE
assert _SRB_PACKET.size == PACKET_SIZE
assert _PROPERTIES.size == 24


_new = object.__new__


def _set_dict(obj, fields: dict) -> None:
    """Give a frozen dataclass instance its fields at once (decode's fast construction)."""
    object.__setattr__(obj, "__dict__", fields)


class StorError(ValueError):
    """Bytes that are not a well-formed vstor packet, range list or sense buffer."""


# -- vstor_packet ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class VstorPacket:
    operation: int
    flags: int = 0
    status: int = 0
    body: bytes = b""  # the 52-byte union, as sent (decode always gives 52 bytes)

    def encode(self) -> bytes:
        if len(self.body) > UNION_SIZE:
            raise ValueError(f"a vstor_packet body is at most {UNION_SIZE} bytes, got {len(self.body)}")
        return _HEADER.pack(self.operation, self.flags, self.status) + self.body.ljust(UNION_SIZE, b"\0")


def decode_packet(payload) -> VstorPacket:
    """The vstor_packet at the start of `payload`; bytes past 64 (ring padding) are ignored."""
    data = bytes(payload[:PACKET_SIZE])
    if len(data) < PACKET_SIZE:
        raise StorError(f"a vstor_packet is {PACKET_SIZE} bytes, got {len(data)}")
    operation, flags, status = _HEADER.unpack_from(data)
    # N.B. filled in directly rather than through the frozen dataclass's __init__ (one
    # object.__setattr__ per field): this runs for every packet. The fields are the same.
    packet = _new(VstorPacket)
    _set_dict(packet, {"operation": operation, "flags": flags, "status": status, "body": data[_HEADER.size:]})
    return packet


# -- the union's members ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ScsiRequest:
    """vmscsi_request. `payload` is the 20-byte cdb/sense_data union; `cdb` and `sense` read it."""

    cdb_length: int = 0
    data_in: int = DATA_UNKNOWN
    data_transfer_length: int = 0
    payload: bytes = b""
    length: int = REQUEST_SIZE
    srb_status: int = 0
    scsi_status: int = 0
    port: int = 0
    path_id: int = 0
    target_id: int = 0
    lun: int = 0
    sense_info_length: int = 0
    srb_flags: int = 0
    time_out_value: int = 0
    queue_tag: int = 0
    queue_action: int = 0
    queue_sort_key: int = 0

    @classmethod
    def for_cdb(cls, cdb: bytes, data_in: int, data_transfer_length: int, **fields) -> ScsiRequest:
        """A request as storvsc builds one: CDB, direction, buffer length, the matching flags."""
        if not 1 <= len(cdb) <= CDB_SIZE:
            raise ValueError(f"a CDB is 1..{CDB_SIZE} bytes, got {len(cdb)}")
        flags = SRB_FLAGS_DISABLE_SYNCH_TRANSFER | {DATA_IN: SRB_FLAGS_DATA_IN,
                                                    DATA_OUT: SRB_FLAGS_DATA_OUT}.get(data_in, 0)
        fields.setdefault("srb_flags", flags)
        fields.setdefault("sense_info_length", SENSE_BUFFER_SIZE)
        fields.setdefault("time_out_value", 60)
        return cls(len(cdb), data_in, data_transfer_length, bytes(cdb), **fields)

    @property
    def cdb(self) -> bytes:
        return self.payload[:min(self.cdb_length, CDB_SIZE)]

    @property
    def sense(self) -> bytes:
        return self.payload[:min(self.sense_info_length, SENSE_BUFFER_SIZE)]

    def encode(self) -> bytes:
        if len(self.payload) > SENSE_BUFFER_SIZE:
            raise ValueError(f"the cdb/sense union is {SENSE_BUFFER_SIZE} bytes, got {len(self.payload)}")
        return _REQUEST.pack(
            self.length, self.srb_status, self.scsi_status, self.port, self.path_id,
            self.target_id, self.lun, self.cdb_length, self.sense_info_length, self.data_in, 0,
            self.data_transfer_length, self.payload, 0, self.queue_tag, self.queue_action,
            self.srb_flags, self.time_out_value, self.queue_sort_key)

    @classmethod
    def decode(cls, body: bytes) -> ScsiRequest:
        if len(body) < REQUEST_SIZE:
            raise StorError(f"a vmscsi_request is {REQUEST_SIZE} bytes, got {len(body)}")
        return cls._from_fields(_REQUEST.unpack_from(body))

    @classmethod
    def _from_fields(cls, fields: tuple) -> ScsiRequest:
        """A request from _REQUEST's unpacked fields (wire order, reserved ones included)."""
        (length, srb_status, scsi_status, port, path_id, target_id, lun, cdb_length,
         sense_info_length, data_in, _, data_transfer_length, payload, _, queue_tag, queue_action,
         srb_flags, time_out_value, queue_sort_key) = fields
        request = _new(cls)  # as decode_packet: the frozen fields set at once, per packet
        _set_dict(request, {
            "cdb_length": cdb_length, "data_in": data_in, "data_transfer_length": data_transfer_length,
            "payload": payload, "length": length, "srb_status": srb_status, "scsi_status": scsi_status,
            "port": port, "path_id": path_id, "target_id": target_id, "lun": lun,
            "sense_info_length": sense_info_length, "srb_flags": srb_flags, "time_out_value": time_out_value,
            "queue_tag": queue_tag, "queue_action": queue_action, "queue_sort_key": queue_sort_key})
        return request


_SRB_FLAGS_FOR = {DATA_IN: SRB_FLAGS_DISABLE_SYNCH_TRANSFER | SRB_FLAGS_DATA_IN,
                  DATA_OUT: SRB_FLAGS_DISABLE_SYNCH_TRANSFER | SRB_FLAGS_DATA_OUT}


def encode_srb_request(cdb: bytes, data_in: int, data_transfer_length: int, lun: int) -> bytes:
    """The EXECUTE_SRB vstor_packet storvsc sends: the bytes of VstorPacket(EXECUTE_SRB,
    REQUEST_COMPLETION_FLAG, 0, ScsiRequest.for_cdb(cdb, data_in, data_transfer_length,
    lun=lun).encode()).encode(), packed in one call (it is built for every I/O)."""
    if not 1 <= len(cdb) <= CDB_SIZE:
        raise ValueError(f"a CDB is 1..{CDB_SIZE} bytes, got {len(cdb)}")
    return _SRB_PACKET.pack(
        Operation.EXECUTE_SRB, REQUEST_COMPLETION_FLAG, 0,
        REQUEST_SIZE, 0, 0, 0, 0, 0, lun, len(cdb), SENSE_BUFFER_SIZE, data_in, 0,
        data_transfer_length, cdb, 0, 0, 0,
        _SRB_FLAGS_FOR.get(data_in, SRB_FLAGS_DISABLE_SYNCH_TRANSFER), 60, 0)


def encode_srb_completion(srb: ScsiRequest, srb_status: int, scsi_status: int, transferred: int,
                          sense: bytes) -> bytes:
    """The COMPLETE_IO vstor_packet storvsp answers `srb` with: its addressing, CDB length and
    direction echoed, the result's statuses, `transferred` and up to SENSE_BUFFER_SIZE bytes of
    `sense` (AUTOSENSE_VALID set when there is sense), the vstor status mapped from the SRB
    status (ntstatus_for). The same bytes as a VstorPacket of a ScsiRequest so built."""
    sense = sense[:SENSE_BUFFER_SIZE]
    if sense:
        srb_status |= SRB_STATUS_AUTOSENSE_VALID
    return _SRB_PACKET.pack(
        Operation.COMPLETE_IO, 0, _NTSTATUS_FOR.get(srb_status & SRB_STATUS_MASK, NtStatus.IO_DEVICE_ERROR),
        REQUEST_SIZE, srb_status, scsi_status, srb.port, srb.path_id, srb.target_id, srb.lun,
        srb.cdb_length, len(sense), srb.data_in, 0, transferred, sense, 0, 0, 0, 0, 0, 0)


@dataclass(frozen=True)
class ChannelProperties:
    max_channel_count: int = 0  # sub-channels the VSP can give (hvsim: none)
    flags: int = 0
    max_transfer_bytes: int = 0

    def encode(self) -> bytes:
        return _PROPERTIES.pack(0, self.max_channel_count, 0, self.flags, self.max_transfer_bytes, 0)

    @classmethod
    def decode(cls, body: bytes) -> ChannelProperties:
        if len(body) < _PROPERTIES.size:
            raise StorError(f"channel properties are {_PROPERTIES.size} bytes, got {len(body)}")
        _, count, _, flags, max_transfer, _ = _PROPERTIES.unpack_from(body)
        return cls(count, flags, max_transfer)


def encode_version(major_minor: int) -> bytes:
    return _VERSION.pack(major_minor, 0)


def decode_version(body: bytes) -> int:
    if len(body) < _VERSION.size:
        raise StorError("short protocol version")
    return _VERSION.unpack_from(body)[0]


def decode_pool(body: bytes) -> int:
    """N.B. a leftover: the pool announcement (operation 0x100, hvsim's own) is gone from the
    protocol, and nothing here sends or takes it; this parser of its union (gpadl_id u32) stays
    only while fuzz/targets.py's vstor harness still calls it. Remove the two together."""
    if len(body) < 8:
        raise StorError("short pool announcement")
    return struct.unpack_from("<I", body)[0]


# -- GPA-direct payloads ---------------------------------------------------------------------------


def encode_gpa_direct(ranges: tuple[GpaRange, ...] | list[GpaRange]) -> bytes:
    """The range list of a GPA-direct packet: what goes between its descriptor and offset8*8."""
    if not ranges:
        raise ValueError("a GPA-direct packet names at least one range")
    parts = [_GPA_HEADER.pack(0, len(ranges))]
    for r in ranges:
        parts.append(struct.pack(f"<II{len(r.pfns)}Q", r.byte_count, r.byte_offset, *r.pfns))
    return b"".join(parts)


def encode_gpa_range(byte_count: int, byte_offset: int, pfns) -> bytes:
    """The range list of a GPA-direct packet with one range: encode_gpa_direct((GpaRange(
    byte_count, byte_offset, pfns),)) without building the range (the caller's own pages)."""
    n = len(pfns)
    return struct.pack(f"<IIII{n}Q", 0, 1, byte_count, byte_offset, *pfns)


def decode_gpa_direct(header) -> tuple[GpaRange, ...]:
    """The ranges of a GPA-direct packet's header (the bytes before offset8*8); every range is
    checked for consistency (non-empty, offset inside the first page, as many PFNs as pages
    touched) and must lie inside the header. Bytes after the last range are ignored."""
    data = bytes(header)
    if len(data) < _GPA_HEADER.size:
        raise StorError(f"a GPA-direct header starts with {_GPA_HEADER.size} bytes, got {len(data)} "
                        f"(offset8 must count the range list)")
    _, count = _GPA_HEADER.unpack_from(data)
    # Every range takes at least 16 bytes: this bounds the loop by the bytes actually sent.
    if count == 0 or count > (len(data) - _GPA_HEADER.size) // _RANGE.size:
        raise StorError(f"range count {count} does not fit a {len(data)}-byte GPA-direct header")
    pos, ranges = _GPA_HEADER.size, []
    for i in range(count):
        if pos + _RANGE.size > len(data):
            raise StorError(f"range {i} of {count} runs past the header")
        byte_count, byte_offset, _ = _RANGE.unpack_from(data, pos)
        if byte_count == 0 or byte_offset >= PAGE_SIZE:
            raise StorError(f"range {i}: byte_count {byte_count}, byte_offset {byte_offset}")
        n = page_count(byte_offset, byte_count)
        end = pos + 8 + 8 * n
        if end > len(data):
            raise StorError(f"range {i} needs {n} PFNs; the header ends first")
        pfns = struct.unpack_from(f"<{n}Q", data, pos + 8)
        if max(pfns) > MAX_PFN:   # n >= 1: byte_count is not 0
            raise StorError(f"range {i} names a PFN beyond {MAX_PFN:#x}")
        ranges.append(GpaRange(byte_count, byte_offset, pfns))
        pos = end
    return tuple(ranges)


# -- SCSI: the commands storvsc sends, and fixed-format sense data ---------------------------------


class Op(enum.IntEnum):
    TEST_UNIT_READY = 0x00
    INQUIRY = 0x12
    READ_CAPACITY_10 = 0x25
    READ_10 = 0x28
    WRITE_10 = 0x2A
    SYNCHRONIZE_CACHE_10 = 0x35
    READ_16 = 0x88
    WRITE_16 = 0x8A
    SERVICE_ACTION_IN_16 = 0x9E
    REPORT_LUNS = 0xA0


SA_READ_CAPACITY_16 = 0x10  # SERVICE ACTION IN(16) service action
BLOCK_SIZE = 512


class SenseKey(enum.IntEnum):
    NO_SENSE = 0x0
    NOT_READY = 0x2
    MEDIUM_ERROR = 0x3
    HARDWARE_ERROR = 0x4
    ILLEGAL_REQUEST = 0x5
    UNIT_ATTENTION = 0x6
    DATA_PROTECT = 0x7
    ABORTED_COMMAND = 0xB


class Asc(enum.IntEnum):
    """Additional sense codes (ASCQ 0 for all of these)."""

    NO_ADDITIONAL_SENSE = 0x00
    WRITE_ERROR = 0x0C
    UNRECOVERED_READ_ERROR = 0x11
    INVALID_COMMAND_OPERATION_CODE = 0x20
    LBA_OUT_OF_RANGE = 0x21
    INVALID_FIELD_IN_CDB = 0x24
    LOGICAL_UNIT_NOT_SUPPORTED = 0x25
    WRITE_PROTECTED = 0x27


SENSE_FIXED_SIZE = 18
_SENSE_CURRENT_FIXED = 0x70


def sense_fixed(key: int, asc: int, ascq: int = 0) -> bytes:
    """Fixed-format sense data (SPC-4 4.5.3), current error, 18 bytes."""
    sense = bytearray(SENSE_FIXED_SIZE)
    sense[0] = _SENSE_CURRENT_FIXED
    sense[2] = key & 0x0F
    sense[7] = SENSE_FIXED_SIZE - 8  # additional sense length
    sense[12], sense[13] = asc, ascq
    return bytes(sense)


def parse_sense(data: bytes) -> tuple[int, int, int]:
    """(sense key, ASC, ASCQ) of fixed (0x70/0x71) or descriptor (0x72/0x73) sense data."""
    if len(data) < 4:
        raise StorError(f"sense data of {len(data)} bytes")
    code = data[0] & 0x7F
    if code in (0x70, 0x71):
        if len(data) < 14:
            raise StorError(f"fixed-format sense data of {len(data)} bytes")
        return data[2] & 0x0F, data[12], data[13]
    if code in (0x72, 0x73):
        return data[1] & 0x0F, data[2], data[3]
    raise StorError(f"unknown sense response code {code:#x}")


def cdb_inquiry(allocation_length: int, page: int | None = None) -> bytes:
    """INQUIRY: the standard page, or a VPD page (EVPD set)."""
    evpd, code = (0, 0) if page is None else (1, page)
    return struct.pack(">BBBHB", Op.INQUIRY, evpd, code, allocation_length, 0)


def cdb_test_unit_ready() -> bytes:
    return bytes(6)


def cdb_read_capacity_10() -> bytes:
    return bytes([Op.READ_CAPACITY_10]) + bytes(9)


def cdb_read_capacity_16(allocation_length: int = 32) -> bytes:
    return struct.pack(">BBQIBB", Op.SERVICE_ACTION_IN_16, SA_READ_CAPACITY_16, 0,
                       allocation_length, 0, 0)


def cdb_rw(write: bool, lba: int, blocks: int) -> bytes:
    """READ/WRITE (10) when LBA and length fit, (16) otherwise."""
    if lba < 1 << 32 and blocks < 1 << 16:
        return struct.pack(">BBIBHB", Op.WRITE_10 if write else Op.READ_10, 0, lba, 0, blocks, 0)
    return struct.pack(">BBQIBB", Op.WRITE_16 if write else Op.READ_16, 0, lba, blocks, 0, 0)


def cdb_synchronize_cache() -> bytes:
    return bytes([Op.SYNCHRONIZE_CACHE_10]) + bytes(9)


def cdb_report_luns(allocation_length: int, select_report: int = 0) -> bytes:
    """REPORT LUNS (SPC-4 6.33): the target's logical units, 8 bytes each after an 8-byte header."""
    return struct.pack(">BBBBBBIBB", Op.REPORT_LUNS, 0, select_report, 0, 0, 0, allocation_length, 0, 0)


def lun_entry(lun: int) -> bytes:
    """A LUN as REPORT LUNS lists it: single-level, peripheral device addressing (method 00b) for
    LUNs below 256, which is every LUN a Hyper-V SCSI controller has (at most 64)."""
    if not 0 <= lun < 256:
        raise ValueError(f"LUN {lun} is outside 0..255 (peripheral device addressing)")
    return bytes([0, lun]) + bytes(6)


def parse_report_luns(data: bytes) -> list[int]:
    """The LUNs of REPORT LUNS parameter data, as far as the data goes (the host is not trusted:
    a list longer than the data is cut to whole entries; entries in other addressing methods, and
    repeats, are left out)."""
    if len(data) < 8:
        raise StorError(f"REPORT LUNS data of {len(data)} bytes")
    (length,) = struct.unpack_from(">I", data)
    luns: list[int] = []
    for at in range(8, min(len(data), 8 + length) - 7, 8):
        entry = data[at:at + 8]
        if entry[0] == 0 and not any(entry[2:]) and entry[1] not in luns:
            luns.append(entry[1])
    return luns
