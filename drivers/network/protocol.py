"""netvsc's wire formats: NVSP, the network protocol on the VMBus channel, and the RNDIS messages it
carries (reference/hyperv-abi.md §6.2 and §4.3; layouts as Linux's hyperv_net.h). Encoding and
decoding only: what a side accepts is vsp.py's and vsc.py's business.

All integers are little-endian. An NVSP message is a u32 type and a fixed body (MESSAGES below);
SEND_RECV_BUF_COMPLETE is followed by its sections. On the wire every NVSP message fills Linux's
whole `struct nvsp_message`, NVSP_MESSAGE_SIZE (40) bytes, zero padded: Linux sends that size and
copies that size out of what it receives. RNDIS messages carry a u32 type and a u32
total length; their offsets count from the byte after those two (the start of the request id or,
for a data packet, of the rndis_packet header), as in RNDIS.

Transfer-page packets (VMBus type 7): descriptor, then xfer_pageset_id u16, sender_owns_set u8,
reserved u8, range_count u32 and range_count {byte_count u32, byte_offset u32}, all counted in the
descriptor's offset8 (Linux's netvsc_receive refuses offset8 * 8 < 24 + 8 * range_count); the
NVSP message is the payload after offset8. GPA-direct packets (type 9), as Linux sends RNDIS
messages that are not in a send-buffer section: the range list {reserved u32, range_count u32,
ranges {byte_count u32, byte_offset u32, pfn u64[pages touched]}} before offset8, the NVSP
SEND_RNDIS_PKT (section index NO_SECTION) as the payload, and the RNDIS message in the guest
pages the ranges name, in range order. The ring keeps the bytes before offset8 as Packet.header.

Every decoder checks every length against the bytes it was given and raises NetError, whose
`reason` names the class of fault (used as a refusal counter's key), for anything malformed.
"""
from __future__ import annotations

import enum
import struct
import uuid
from typing import NamedTuple

CLASS_ID = uuid.UUID("f8615163-df3e-46c5-913f-f2d2f965ed0e")  # Hyper-V's synthetic network adapter

# NVSP protocol versions (major << 16 | minor; version 1 is plain 2).
NVSP_VERSION_1 = 0x00000002
NVSP_VERSION_2 = 0x00030002
NVSP_VERSION_4 = 0x00040000
NVSP_VERSION_5 = 0x00050000
NVSP_VERSION_6 = 0x00060000
NVSP_VERSION_61 = 0x00060001
VERSIONS = (NVSP_VERSION_61, NVSP_VERSION_6, NVSP_VERSION_5, NVSP_VERSION_4, NVSP_VERSION_2, NVSP_VERSION_1)  # newest first

NDIS_VERSION = (6, 30)          # what Linux announces with SEND_NDIS_VER from NVSP 5 on
RECEIVE_BUFFER_ID = 0xCAFE      # Linux's NETVSC_RECEIVE_BUFFER_ID: the transfer page set id
SEND_BUFFER_ID = 0
NO_SECTION = 0xFFFFFFFF         # send_buf_section_index: the RNDIS message is not in the send buffer
CHANNEL_DATA, CHANNEL_CONTROL = 0, 1   # SEND_RNDIS_PKT channel_type


class NetError(ValueError):
    """Bytes that are not a well-formed NVSP or RNDIS message; `reason` says which check failed."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class NvspType(enum.IntEnum):
    INIT = 1
    INIT_COMPLETE = 2
    SEND_NDIS_VER = 100
    SEND_RECV_BUF = 101
    SEND_RECV_BUF_COMPLETE = 102
    REVOKE_RECV_BUF = 103
    SEND_SEND_BUF = 104
    SEND_SEND_BUF_COMPLETE = 105
    REVOKE_SEND_BUF = 106
    SEND_RNDIS_PKT = 107
    SEND_RNDIS_PKT_COMPLETE = 108
    SEND_NDIS_CONFIG = 125      # NVSP 2: the guest's MTU and capabilities


class NvspStatus(enum.IntEnum):
    NONE = 0
    SUCCESS = 1
    FAIL = 2
    PROTOCOL_TOO_NEW = 3
    PROTOCOL_TOO_OLD = 4
    INVALID_RNDIS_PKT = 5
    BUSY = 6
    PROTOCOL_UNSUPPORTED = 7


# -- NVSP messages ---------------------------------------------------------------------------------

class Init(NamedTuple):
    min_version: int
    max_version: int


class InitComplete(NamedTuple):
    version: int
    max_mdl_chain: int
    status: int


class SendNdisVersion(NamedTuple):
    major: int
    minor: int


class SendNdisConfig(NamedTuple):
    mtu: int
    reserved: int = 0
    capabilities: int = 0


class SendReceiveBuffer(NamedTuple):
    gpadl_id: int
    buffer_id: int


class Section(NamedTuple):
    """One receive-buffer section: num_sub_allocs slots of sub_alloc_size bytes from offset."""
    offset: int
    sub_alloc_size: int
    num_sub_allocs: int
    end_offset: int


class ReceiveBufferComplete(NamedTuple):
    status: int
    sections: tuple[Section, ...] = ()


class RevokeReceiveBuffer(NamedTuple):
    buffer_id: int


class SendSendBuffer(NamedTuple):
    gpadl_id: int
    buffer_id: int


class SendBufferComplete(NamedTuple):
    status: int
    section_size: int


class RevokeSendBuffer(NamedTuple):
    buffer_id: int


class SendRndisPacket(NamedTuple):
    channel_type: int
    section_index: int = NO_SECTION
    section_size: int = 0


class RndisPacketComplete(NamedTuple):
    status: int


# The message table: type -> (tuple class, body layout). ReceiveBufferComplete's sections follow
# its fixed body (status, count).
MESSAGES: dict[NvspType, tuple[type, struct.Struct]] = {
    NvspType.INIT: (Init, struct.Struct("<II")),
    NvspType.INIT_COMPLETE: (InitComplete, struct.Struct("<III")),
    NvspType.SEND_NDIS_VER: (SendNdisVersion, struct.Struct("<II")),
    NvspType.SEND_RECV_BUF: (SendReceiveBuffer, struct.Struct("<IH")),
    NvspType.SEND_RECV_BUF_COMPLETE: (ReceiveBufferComplete, struct.Struct("<II")),
    NvspType.REVOKE_RECV_BUF: (RevokeReceiveBuffer, struct.Struct("<H")),
    NvspType.SEND_SEND_BUF: (SendSendBuffer, struct.Struct("<IH")),
    NvspType.SEND_SEND_BUF_COMPLETE: (SendBufferComplete, struct.Struct("<II")),
    NvspType.REVOKE_SEND_BUF: (RevokeSendBuffer, struct.Struct("<H")),
    NvspType.SEND_RNDIS_PKT: (SendRndisPacket, struct.Struct("<III")),
    NvspType.SEND_RNDIS_PKT_COMPLETE: (RndisPacketComplete, struct.Struct("<I")),
    NvspType.SEND_NDIS_CONFIG: (SendNdisConfig, struct.Struct("<IIQ")),
}
_TYPE_OF = {cls: kind for kind, (cls, _) in MESSAGES.items()}
_BY_NUMBER = {int(kind): (kind, cls, layout) for kind, (cls, layout) in MESSAGES.items()}  # decoding's hot lookup
_U32 = struct.Struct("<I")
_SECTION = struct.Struct("<IIII")
MAX_SECTIONS = 16  # sections a receive-buffer completion may list (Linux uses one)
NVSP_MESSAGE_SIZE = 40  # Linux's sizeof(struct nvsp_message): every message is sent this long
RNDIS_PKT_MESSAGE_SIZE = NVSP_MESSAGE_SIZE  # hvsim's in-band RNDIS (no section, no ranges) starts here


def encode_nvsp(message: NamedTuple) -> bytes:
    """The message as Linux's struct nvsp_message: type, body, zeros up to NVSP_MESSAGE_SIZE (a
    receive-buffer completion listing more sections than fit runs longer)."""
    kind = _TYPE_OF[type(message)]
    layout = MESSAGES[kind][1]
    if kind is NvspType.SEND_RECV_BUF_COMPLETE:
        raw = (_U32.pack(kind) + layout.pack(message.status, len(message.sections))
               + b"".join(_SECTION.pack(*s) for s in message.sections))
    else:
        raw = _U32.pack(kind) + layout.pack(*message)
    return raw.ljust(NVSP_MESSAGE_SIZE, b"\0")


def decode_nvsp(payload) -> tuple[NamedTuple, bytes]:
    """(message, the bytes after the whole nvsp_message) of a packet payload. A peer may send
    just the fixed fields (then nothing follows); padding after NVSP_MESSAGE_SIZE is returned,
    not refused."""
    if not isinstance(payload, bytes):
        payload = bytes(payload)
    if len(payload) < 4:
        raise NetError("nvsp_length", f"{len(payload)} bytes hold no NVSP message type")
    (raw,) = _U32.unpack_from(payload)
    entry = _BY_NUMBER.get(raw)
    if entry is None:
        raise NetError("nvsp_type", f"unknown NVSP message type {raw}")
    kind, cls, layout = entry
    end = 4 + layout.size
    if len(payload) < end:
        raise NetError("nvsp_length", f"{kind.name} needs {end} bytes, got {len(payload)}")
    fields = layout.unpack_from(payload, 4)
    if kind is NvspType.SEND_RECV_BUF_COMPLETE:
        status, count = fields
        if count > MAX_SECTIONS or len(payload) < end + count * _SECTION.size:
            raise NetError("nvsp_length", f"{count} receive-buffer sections do not fit {len(payload)} bytes")
        sections = tuple(Section(*_SECTION.unpack_from(payload, end + i * _SECTION.size)) for i in range(count))
        return ReceiveBufferComplete(status, sections), payload[max(end + count * _SECTION.size, NVSP_MESSAGE_SIZE):]
    return cls(*fields), payload[max(end, NVSP_MESSAGE_SIZE):]


# -- transfer-page packets --------------------------------------------------------------------------

PKT_DATA_USING_XFER_PAGES = 7
_XFER = struct.Struct("<HBBI")   # xfer_pageset_id, sender_owns_set, reserved, range_count
_RANGE = struct.Struct("<II")    # byte_count, byte_offset


def encode_transfer_pages(pageset_id: int, ranges: list[tuple[int, int]]) -> bytes:
    """A type-7 packet's header (what goes before offset8): ranges [(byte_offset, byte_count)]
    of the page set. The NVSP message is the packet's payload."""
    return (_XFER.pack(pageset_id, 0, 0, len(ranges))
            + b"".join(_RANGE.pack(count, offset) for offset, count in ranges))


def decode_transfer_pages(header, max_ranges: int) -> tuple[int, list[tuple[int, int]]]:
    """(page set id, [(byte_offset, byte_count)]) of a type-7 packet's header (the bytes before
    offset8). As Linux's netvsc_receive: the ranges must lie inside the header that offset8
    counts. Ranges are not checked against any buffer here: the receiver knows its buffer's size."""
    header = bytes(header)
    if len(header) < _XFER.size:
        raise NetError("xfer_length", f"offset8 counts {len(header)} header bytes, no transfer-page header")
    pageset_id, _, _, count = _XFER.unpack_from(header)
    if not 1 <= count <= max_ranges:
        raise NetError("xfer_range", f"{count} transfer-page ranges (1..{max_ranges} allowed)")
    end = _XFER.size + count * _RANGE.size
    if len(header) < end:
        raise NetError("xfer_length", f"{count} ranges do not fit the {len(header)} header bytes offset8 counts")
    ranges = [(offset, size) for size, offset in _RANGE.iter_unpack(header[_XFER.size:end])]
    return pageset_id, ranges


# -- GPA-direct packets ---------------------------------------------------------------------------

PKT_DATA_USING_GPA_DIRECT = 9
_GPA_HEAD = struct.Struct("<II")    # reserved, range_count
_GPA_RANGE = struct.Struct("<II")   # byte_count, byte_offset; then one u64 PFN per page touched
_PAGE = 4096


def encode_page_buffers(ranges: list[tuple[int, int, list[int]]]) -> bytes:
    """A type-9 packet's header: ranges [(byte_count, byte_offset, pfns)]."""
    return _GPA_HEAD.pack(0, len(ranges)) + b"".join(
        _GPA_RANGE.pack(count, offset) + struct.pack(f"<{len(pfns)}Q", *pfns) for count, offset, pfns in ranges)


def decode_page_buffers(header, max_ranges: int) -> list[tuple[int, int, tuple[int, ...]]]:
    """[(byte_count, byte_offset, pfns)] of a type-9 packet's header: Linux's page buffers (one
    PFN per range) or multi-page ranges; each range is non-empty, starts inside its first page and
    carries one PFN per page it touches, all inside the header."""
    header = bytes(header)
    if len(header) < _GPA_HEAD.size:
        raise NetError("gpa_length", f"offset8 counts {len(header)} header bytes, no GPA-direct header")
    _, count = _GPA_HEAD.unpack_from(header)
    if not 1 <= count <= max_ranges:
        raise NetError("gpa_range", f"{count} GPA-direct ranges (1..{max_ranges} allowed)")
    pos, ranges = _GPA_HEAD.size, []
    for i in range(count):
        if pos + _GPA_RANGE.size > len(header):
            raise NetError("gpa_length", f"range {i} of {count} runs past the header")
        size, offset = _GPA_RANGE.unpack_from(header, pos)
        if size == 0 or offset >= _PAGE:
            raise NetError("gpa_range", f"range {i}: {size} bytes at offset {offset}")
        pages = (offset + size + _PAGE - 1) // _PAGE
        end = pos + _GPA_RANGE.size + 8 * pages
        if end > len(header):
            raise NetError("gpa_length", f"range {i} needs {pages} PFNs; the header ends first")
        ranges.append((size, offset, struct.unpack_from(f"<{pages}Q", header, pos + _GPA_RANGE.size)))
        pos = end
    return ranges


# -- RNDIS ----------------------------------------------------------------------------------------

class RndisType(enum.IntEnum):
    PACKET = 0x00000001
    INITIALIZE = 0x00000002
    HALT = 0x00000003
    QUERY = 0x00000004
    SET = 0x00000005
    RESET = 0x00000006
    INDICATE_STATUS = 0x00000007
    KEEPALIVE = 0x00000008
    INITIALIZE_CMPLT = 0x80000002
    QUERY_CMPLT = 0x80000004
    SET_CMPLT = 0x80000005
    RESET_CMPLT = 0x80000006
    KEEPALIVE_CMPLT = 0x80000008


RNDIS_STATUS_SUCCESS = 0x00000000
RNDIS_STATUS_FAILURE = 0xC0000001
RNDIS_STATUS_NOT_SUPPORTED = 0xC00000BB
RNDIS_STATUS_INVALID_LENGTH = 0xC0010014
RNDIS_STATUS_INVALID_DATA = 0xC0010015
RNDIS_STATUS_MEDIA_CONNECT = 0x4001000B
RNDIS_STATUS_MEDIA_DISCONNECT = 0x4001000C

RNDIS_MAJOR, RNDIS_MINOR = 1, 0
RNDIS_DF_CONNECTIONLESS = 1
MEDIUM_802_3 = 0

# OIDs (NDIS object identifiers).
OID_GEN_SUPPORTED_LIST = 0x00010101
OID_GEN_HARDWARE_STATUS = 0x00010102
OID_GEN_MEDIA_SUPPORTED = 0x00010103
OID_GEN_MEDIA_IN_USE = 0x00010104
OID_GEN_MAXIMUM_FRAME_SIZE = 0x00010106
OID_GEN_LINK_SPEED = 0x00010107             # in units of 100 bit/s
OID_GEN_CURRENT_PACKET_FILTER = 0x0001010E
OID_GEN_MAXIMUM_TOTAL_SIZE = 0x00010111
OID_GEN_MEDIA_CONNECT_STATUS = 0x00010114   # 0 connected, 1 disconnected
OID_GEN_RNDIS_CONFIG_PARAMETER = 0x0001021B
OID_SWITCH_NIC_REQUEST = 0x00010270         # host-internal: the OID behind CVE-2021-28476
OID_802_3_PERMANENT_ADDRESS = 0x01010101
OID_802_3_CURRENT_ADDRESS = 0x01010102
OID_802_3_MULTICAST_LIST = 0x01010103
OID_TCP_OFFLOAD_PARAMETERS = 0xFC01020C

MEDIA_CONNECTED, MEDIA_DISCONNECTED = 0, 1

# OID_GEN_CURRENT_PACKET_FILTER bits.
FILTER_DIRECTED = 0x01
FILTER_MULTICAST = 0x02
FILTER_ALL_MULTICAST = 0x04
FILTER_BROADCAST = 0x08
FILTER_PROMISCUOUS = 0x20


class RndisInitialize(NamedTuple):
    req_id: int
    major: int = RNDIS_MAJOR
    minor: int = RNDIS_MINOR
    max_transfer_size: int = 0x4000


class RndisInitializeComplete(NamedTuple):
    req_id: int
    status: int
    major: int = RNDIS_MAJOR
    minor: int = RNDIS_MINOR
    device_flags: int = RNDIS_DF_CONNECTIONLESS
    medium: int = MEDIUM_802_3
    max_packets_per_message: int = 1
    max_transfer_size: int = 0
    packet_alignment_factor: int = 0
    af_list_offset: int = 0
    af_list_size: int = 0


class RndisHalt(NamedTuple):
    req_id: int


class RndisQuery(NamedTuple):
    req_id: int
    oid: int
    info: bytes = b""


class RndisQueryComplete(NamedTuple):
    req_id: int
    status: int
    info: bytes = b""


class RndisSet(NamedTuple):
    req_id: int
    oid: int
    info: bytes = b""


class RndisSetComplete(NamedTuple):
    req_id: int
    status: int


class RndisKeepalive(NamedTuple):
    req_id: int


class RndisKeepaliveComplete(NamedTuple):
    req_id: int
    status: int


class RndisIndicateStatus(NamedTuple):
    status: int
    info: bytes = b""


class RndisPacket(NamedTuple):
    data: bytes
    per_packet_info: bytes = b""


_HEAD = struct.Struct("<II")                 # message type, message length
_PACKET = struct.Struct("<IIIIIIIII")        # rndis_packet: 36 bytes
_QUERY = struct.Struct("<IIIII")             # req_id, oid, info_buflen, info_buf_offset, dev_vc_handle
_QUERY_CMPLT = struct.Struct("<IIII")        # req_id, status, info_buflen, info_buf_offset
_INDICATE = struct.Struct("<III")            # status, status_buflen, status_buf_offset
_FIXED: dict[RndisType, tuple[type, struct.Struct]] = {
    RndisType.INITIALIZE: (RndisInitialize, struct.Struct("<IIII")),
    RndisType.INITIALIZE_CMPLT: (RndisInitializeComplete, struct.Struct("<11I")),
    RndisType.HALT: (RndisHalt, struct.Struct("<I")),
    RndisType.SET_CMPLT: (RndisSetComplete, struct.Struct("<II")),
    RndisType.KEEPALIVE: (RndisKeepalive, struct.Struct("<I")),
    RndisType.KEEPALIVE_CMPLT: (RndisKeepaliveComplete, struct.Struct("<II")),
}
_RNDIS_TYPE_OF = {cls: kind for kind, (cls, _) in _FIXED.items()}
PACKET_HEADER_SIZE = _HEAD.size + _PACKET.size   # 44: a data message before its frame


def _message(kind: int, body: bytes) -> bytes:
    return _HEAD.pack(kind, _HEAD.size + len(body)) + body


def encode_packet(frame: bytes) -> bytes:
    """A data message carrying one frame right after its header (the hot path: no tuple)."""
    n = len(frame)
    return _HEAD.pack(RndisType.PACKET, PACKET_HEADER_SIZE + n) + _PACKET.pack(_PACKET.size, n, 0, 0, 0, 0, 0, 0, 0) + frame


def encode_rndis(message: NamedTuple) -> bytes:
    kind = _RNDIS_TYPE_OF.get(type(message))
    if kind is not None:
        return _message(kind, _FIXED[kind][1].pack(*message))
    if isinstance(message, RndisPacket):
        ppi = message.per_packet_info
        data_offset = _PACKET.size + len(ppi)
        body = _PACKET.pack(data_offset, len(message.data), 0, 0, 0,
                            _PACKET.size if ppi else 0, len(ppi), 0, 0)
        return _message(RndisType.PACKET, body + ppi + message.data)
    if isinstance(message, (RndisQuery, RndisSet)):
        kind = RndisType.QUERY if isinstance(message, RndisQuery) else RndisType.SET
        info = message.info
        return _message(kind, _QUERY.pack(message.req_id, message.oid, len(info), _QUERY.size if info else 0, 0) + info)
    if isinstance(message, RndisQueryComplete):
        info = message.info
        return _message(RndisType.QUERY_CMPLT,
                        _QUERY_CMPLT.pack(message.req_id, message.status, len(info), _QUERY_CMPLT.size if info else 0)
                        + info)
    if isinstance(message, RndisIndicateStatus):
        info = message.info
        return _message(RndisType.INDICATE_STATUS,
                        _INDICATE.pack(message.status, len(info), _INDICATE.size if info else 0) + info)
    raise TypeError(f"{type(message).__name__} is not an RNDIS message")


def rndis_type(buf) -> int:
    """The message type of an RNDIS message (0 if there are not even 4 bytes)."""
    return _U32.unpack_from(buf)[0] if len(buf) >= 4 else 0


def _span(body: bytes, offset: int, length: int, fixed: int, what: str) -> bytes:
    """body[offset:offset+length], where offset counts from the start of body and may not point
    into the fixed header; empty when length is 0."""
    if length == 0:
        return b""
    if offset < fixed or offset + length > len(body):
        raise NetError("rndis_length", f"{what} of {length} bytes at offset {offset} is outside the "
                                       f"{len(body)}-byte message body")
    return body[offset:offset + length]


def decode_rndis(buf) -> NamedTuple:
    """One RNDIS message from the start of buf (extra bytes after its length are ignored)."""
    buf = bytes(buf)
    if len(buf) < _HEAD.size:
        raise NetError("rndis_length", f"{len(buf)} bytes hold no RNDIS header")
    raw, length = _HEAD.unpack_from(buf)
    if length < _HEAD.size or length > len(buf):
        raise NetError("rndis_length", f"message length {length} with {len(buf)} bytes available")
    try:
        kind = RndisType(raw)
    except ValueError:
        raise NetError("rndis_type", f"unknown RNDIS message type {raw:#x}") from None
    body = buf[_HEAD.size:length]
    if kind is RndisType.PACKET:
        return decode_packet_body(body)
    if kind in _FIXED:
        cls, layout = _FIXED[kind]
        if len(body) < layout.size:
            raise NetError("rndis_length", f"{kind.name} needs {layout.size} bytes of body, got {len(body)}")
        return cls(*layout.unpack_from(body))
    if kind in (RndisType.QUERY, RndisType.SET):
        if len(body) < _QUERY.size:
            raise NetError("rndis_length", f"{kind.name} needs {_QUERY.size} bytes of body, got {len(body)}")
        req_id, oid, info_len, info_offset, _ = _QUERY.unpack_from(body)
        info = _span(body, info_offset, info_len, _QUERY.size, "information buffer")
        return (RndisQuery if kind is RndisType.QUERY else RndisSet)(req_id, oid, info)
    if kind is RndisType.QUERY_CMPLT:
        if len(body) < _QUERY_CMPLT.size:
            raise NetError("rndis_length", f"QUERY_CMPLT needs {_QUERY_CMPLT.size} bytes of body, got {len(body)}")
        req_id, status, info_len, info_offset = _QUERY_CMPLT.unpack_from(body)
        return RndisQueryComplete(req_id, status, _span(body, info_offset, info_len, _QUERY_CMPLT.size,
                                                        "information buffer"))
    if kind is RndisType.INDICATE_STATUS:
        if len(body) < _INDICATE.size:
            raise NetError("rndis_length", f"INDICATE_STATUS needs {_INDICATE.size} bytes of body, got {len(body)}")
        status, info_len, info_offset = _INDICATE.unpack_from(body)
        return RndisIndicateStatus(status, _span(body, info_offset, info_len, _INDICATE.size, "status buffer"))
    raise NetError("rndis_type", f"RNDIS {kind.name} has no decoder here")


def decode_packet_body(body: bytes) -> RndisPacket:
    """The rndis_packet that follows a PACKET header: every offset and length inside the body."""
    if len(body) < _PACKET.size:
        raise NetError("rndis_length", f"a data packet needs {_PACKET.size} bytes of header, got {len(body)}")
    (data_offset, data_len, oob_offset, oob_len, _, ppi_offset, ppi_len, _, _) = _PACKET.unpack_from(body)
    if data_len == 0:
        raise NetError("rndis_length", "a data packet without data")
    data = _span(body, data_offset, data_len, _PACKET.size, "packet data")
    _span(body, oob_offset, oob_len, _PACKET.size, "out-of-band data")
    ppi = _span(body, ppi_offset, ppi_len, _PACKET.size, "per-packet information")
    return RndisPacket(data, ppi)
