"""The wire framing all integration services (ICs) share: a vmbuspipe header and an icmsg header in
front of every message, the version negotiation message, and the HRESULT-style statuses.

Layout (reference/hyperv-abi.md §5.1; little-endian). An IC packet is an in-band VMBus packet:

    vmbuspipe_hdr (8)   flags u32 (1 = data), msgsize u32 (bytes after this header)
    icmsg_hdr (20)      framework {major u16, minor u16}, msgtype u16, version {major, minor},
                        icmsgsize u16 (body bytes), status u32, transaction u8, icflags u8,
                        reserved u16
    body                icmsgsize bytes

The host starts every exchange (icflags TRANSACTION|REQUEST); the guest answers in the same
buffer with TRANSACTION|RESPONSE, its status, and the ring descriptor's transaction id.

Ring payloads come padded to 8 bytes, so lengths come from the headers; `decode` checks that
they agree with each other and with the packet: icmsgsize <= msgsize - 20 <= len(payload) - 8.
(Linux answers a negotiation with icmsgsize 16 and the host's msgsize unchanged, so msgsize
may exceed what icmsgsize needs; it may never exceed the packet.)
"""
from __future__ import annotations

import struct
from typing import Iterable, NamedTuple

# Message types (icmsgtype).
NEGOTIATE, HEARTBEAT, KVP_EXCHANGE, SHUTDOWN, TIMESYNC, VSS = 0, 1, 2, 3, 4, 5
MESSAGE_TYPES = {NEGOTIATE: "negotiate", HEARTBEAT: "heartbeat", KVP_EXCHANGE: "kvp",
                 SHUTDOWN: "shutdown", TIMESYNC: "timesync", VSS: "vss"}

# icflags.
TRANSACTION, REQUEST, RESPONSE = 1, 2, 4
_FLAGS_RESERVED = 0xF8

# Statuses (include/uapi/linux/hyperv.h).
HV_S_OK = 0x00000000
HV_E_FAIL = 0x80004005
HV_S_CONT = 0x80070103                  # Linux's "no such item" / end of an enumeration
HV_ERROR_NOT_SUPPORTED = 0x80070032
HV_ERROR_MACHINE_LOCKED = 0x800704F7
HV_ERROR_DEVICE_NOT_CONNECTED = 0x8007048F
HV_INVALIDARG = 0x80070057
HV_GUID_NOTFOUND = 0x80041002
HV_ERROR_ALREADY_EXISTS = 0x80070050
HV_ERROR_DISK_FULL = 0x80070070
STATUS_NAMES = {HV_S_OK: "S_OK", HV_E_FAIL: "E_FAIL", HV_S_CONT: "S_CONT",
                HV_ERROR_NOT_SUPPORTED: "NOT_SUPPORTED", HV_ERROR_MACHINE_LOCKED: "MACHINE_LOCKED",
                HV_ERROR_DEVICE_NOT_CONNECTED: "DEVICE_NOT_CONNECTED", HV_INVALIDARG: "INVALIDARG",
                HV_GUID_NOTFOUND: "GUID_NOTFOUND", HV_ERROR_ALREADY_EXISTS: "ALREADY_EXISTS",
                HV_ERROR_DISK_FULL: "DISK_FULL"}

PIPE_DATA = 1                           # VmPipeMessageData: a whole message follows
PIPE_HEADER = struct.Struct("<II")
IC_HEADER = struct.Struct("<HHHHHHIBBH")
HEADER_SIZE = PIPE_HEADER.size + IC_HEADER.size  # 28 (Linux ICMSG_HDR)
# Both headers at once: every message is framed and read with one struct call (the periodic
# exchanges of an idle host are mostly framing).
FRAME = struct.Struct("<" + PIPE_HEADER.format[1:] + IC_HEADER.format[1:])
MAX_MESSAGE_SIZE = 13312                # OpenVMM's bound on one IC packet, headers included
MAX_BODY = MAX_MESSAGE_SIZE - HEADER_SIZE


def status_name(status: int) -> str:
    return STATUS_NAMES.get(status, f"0x{status:08x}")


class IcError(ValueError):
    """Anything malformed in an IC message. `status` is what a guest answers a well-framed
    request it cannot take with."""

    def __init__(self, message: str, status: int = HV_E_FAIL):
        super().__init__(message)
        self.status = status


class Version(NamedTuple):
    major: int
    minor: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"

    @classmethod
    def of(cls, value) -> Version:
        """A version from a Version (itself: a VSP's or VSC's lists share the defaults'), a
        (major, minor) pair or a string such as "3.0"."""
        if type(value) is cls:   # (each channel's VSP and VSC ask, for every listed version)
            major, minor = value
            if type(major) is int and type(minor) is int and 0 <= major <= 0xFFFF and 0 <= minor <= 0xFFFF:
                return value
        if isinstance(value, str):
            major, dot, minor = value.partition(".")
            if not (dot and major.isdigit() and minor.isdigit()):
                raise ValueError(f"a version is written like \"3.0\", got {value!r}")
            value = (int(major), int(minor))
        major, minor = value
        if not all(type(v) is int and 0 <= v <= 0xFFFF for v in (major, minor)):
            raise ValueError(f"version parts are u16, got {value!r}")
        return cls(major, minor)


# Version tuples already found to be lists of Versions, by id (each kept alive here, so its id
# is not reused; by id, as a tuple may hold unhashable pairs).
_CHECKED_LISTS: dict[int, tuple] = {}


def versions(values: Iterable) -> tuple[Version, ...]:
    if type(values) is tuple and _CHECKED_LISTS.get(id(values)) is values:
        return values   # a class default again (each channel's VSP and VSC ask)
    out = tuple(Version.of(v) for v in values)
    if not out:
        raise ValueError("a version list cannot be empty")
    if type(values) is tuple and all(a is b for a, b in zip(out, values)):
        if len(_CHECKED_LISTS) < 64:   # the class defaults; a config's own lists are not kept
            _CHECKED_LISTS[id(values)] = values
        return values   # a class default: one tuple for every channel, not one per channel
    return out


FRAMEWORK_VERSIONS = (Version(3, 0), Version(1, 0))  # UTIL_FW_VERSION, UTIL_WS2K8_FW_VERSION


class IcHeader(NamedTuple):
    """An icmsg header as read or to be written (a tuple: cheap to make, once per message)."""
    msgtype: int
    framework: Version
    version: Version
    trans_id: int = 0                   # u8; the ring descriptor carries the real (u64) id
    flags: int = TRANSACTION | REQUEST
    status: int = HV_S_OK


def encode(header: IcHeader, body: bytes = b"") -> bytes:
    msgtype, fw, ver, trans_id, flags, status = header
    n = len(body)
    if n > MAX_BODY:
        raise ValueError(f"an IC body is at most {MAX_BODY} bytes, got {n}")
    return _FRAME_PACK(PIPE_DATA, _IC_SIZE + n, fw[0], fw[1], msgtype, ver[0], ver[1], n, status,
                       trans_id & 0xFF, flags, 0) + body


def encode_answer(request: IcHeader, status: int, body: bytes = b"") -> bytes:
    """The answer to `request`: its header (type, versions, transaction) with TRANSACTION|RESPONSE
    and `status`, then `body`; as encode(request._replace(...)), without the new header."""
    msgtype, fw, ver, trans_id = request[:4]
    n = len(body)
    if n > MAX_BODY:
        raise ValueError(f"an IC body is at most {MAX_BODY} bytes, got {n}")
    return _FRAME_PACK(PIPE_DATA, _IC_SIZE + n, fw[0], fw[1], msgtype, ver[0], ver[1], n, status,
                       trans_id & 0xFF, TRANSACTION | RESPONSE, 0) + body


# What decode runs per message without a Python-level call: the headers are read with the two
# versions as u32 words (major | minor << 16), each mapped to its (interned) Version by a dict,
# and the IcHeader is made with tuple.__new__ (a named tuple's own constructor is a Python
# function). The periodic exchanges of an idle host are mostly this.
_RAW = struct.Struct("<IIIHIHIBBH")
assert _RAW.size == HEADER_SIZE
_RAW_UNPACK = _RAW.unpack_from
_FRAME_PACK = FRAME.pack
_IC_SIZE = IC_HEADER.size
_TUPLE_NEW = tuple.__new__
_VERSION_OF_WORD: dict[int, Version] = {}


def _version(word: int) -> Version:
    """The Version a u32 word holds; the first 4,096 distinct words are interned (a hostile
    sender cannot grow the table without bound)."""
    v = _VERSION_OF_WORD.get(word)
    if v is None:
        v = Version(word & 0xFFFF, word >> 16)
        if len(_VERSION_OF_WORD) < 4096:
            _VERSION_OF_WORD[word] = v
    return v


def decode(payload) -> tuple[IcHeader, bytes]:
    """(header, body) of a packet payload; IcError for anything malformed. Every field comes
    from one read of the headers, and the body is copied out once, after the checks."""
    n = len(payload)
    if n < HEADER_SIZE:
        raise IcError(f"an IC message has a {HEADER_SIZE}-byte header, got {n} bytes")
    if n > MAX_MESSAGE_SIZE:
        raise IcError(f"{n}-byte IC message > {MAX_MESSAGE_SIZE}")
    pipe_flags, msgsize, fw, msgtype, ver, size, status, trans_id, flags, _reserved = _RAW_UNPACK(payload)
    if pipe_flags != PIPE_DATA:
        raise IcError(f"pipe message type {pipe_flags}, expected {PIPE_DATA} (data)")
    if not _IC_SIZE <= msgsize <= n - 8:
        raise IcError(f"pipe msgsize {msgsize} does not fit a {n}-byte packet")
    if size > msgsize - _IC_SIZE:
        raise IcError(f"icmsgsize {size} > the {msgsize - _IC_SIZE} bytes the pipe carries")
    if flags & _FLAGS_RESERVED:
        raise IcError(f"reserved icflags set: 0x{flags:02x}")
    words = _VERSION_OF_WORD
    fw = words.get(fw) or _version(fw)
    ver = words.get(ver) or _version(ver)
    header = _TUPLE_NEW(IcHeader, (msgtype, fw, ver, trans_id, flags, status))
    return header, bytes(payload[HEADER_SIZE:HEADER_SIZE + size])


# -- the negotiate message (type 0) ----------------------------------------------------------------

_NEGOTIATE = struct.Struct("<HHI")     # icframe_vercnt, icmsg_vercnt, reserved; then the versions
_VERSION = struct.Struct("<HH")


def negotiate_body(frameworks, service_versions) -> bytes:
    """The host's offer: framework versions, then service versions (each in preference order)."""
    listed = (*frameworks, *service_versions)
    return _NEGOTIATE.pack(len(frameworks), len(service_versions), 0) + b"".join(
        _VERSION.pack(*v) for v in listed)


def parse_negotiate(body: bytes) -> tuple[tuple[Version, ...], tuple[Version, ...]]:
    """(framework versions, service versions) of a negotiate body."""
    if len(body) < _NEGOTIATE.size:
        raise IcError(f"a negotiate message has an {_NEGOTIATE.size}-byte header, got {len(body)}")
    n_fw, n_msg, _ = _NEGOTIATE.unpack_from(body)
    if _NEGOTIATE.size + _VERSION.size * (n_fw + n_msg) > len(body):
        raise IcError(f"{n_fw} + {n_msg} versions do not fit a {len(body)}-byte negotiate body")
    words = _VERSION_OF_WORD
    listed = [words.get(w) or _version(w) for w in struct.unpack_from(f"<{n_fw + n_msg}I", body, _NEGOTIATE.size)]
    return tuple(listed[:n_fw]), tuple(listed[n_fw:])


def choose(offered_fw, offered_ver, wanted_fw, wanted_ver) -> tuple[Version, Version] | None:
    """Linux's vmbus_prep_negotiate_resp: the first framework of the guest's preference list that
    the host offers, then the first service version likewise; None unless both exist."""
    fw = next((v for v in wanted_fw if v in offered_fw), None)
    ver = next((v for v in wanted_ver if v in offered_ver), None)
    return (fw, ver) if fw is not None and ver is not None else None


def negotiate_reply(body: bytes, wanted_fw, wanted_ver) -> tuple[bytes, tuple[Version, Version] | None]:
    """The guest's answer to an offer: counts 1/1 and the chosen pair, or counts 0/0. The answer
    is 16 bytes either way, as Linux's (icmsgsize 0x10)."""
    chosen = choose(*parse_negotiate(body), wanted_fw, wanted_ver)
    if chosen is None:
        return _NEGOTIATE.pack(0, 0, 0) + bytes(2 * _VERSION.size), None
    return _NEGOTIATE.pack(1, 1, 0) + _VERSION.pack(*chosen[0]) + _VERSION.pack(*chosen[1]), chosen


def parse_negotiate_reply(body: bytes, offered_fw, offered_ver) -> tuple[Version, Version] | None:
    """The host reading the guest's answer: the chosen pair, or None if the guest found no common
    version. A pair the host never offered, or other counts, is malformed."""
    fws, vers = parse_negotiate(body)
    if not fws and not vers:
        return None
    if len(fws) != 1 or len(vers) != 1:
        raise IcError(f"a negotiate answer has counts 1/1 or 0/0, got {len(fws)}/{len(vers)}")
    if fws[0] not in offered_fw or vers[0] not in offered_ver:
        raise IcError(f"the guest chose {fws[0]}/{vers[0]}, which was not offered")
    return fws[0], vers[0]
