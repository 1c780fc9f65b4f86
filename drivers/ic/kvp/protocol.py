"""The KVP (key-value pair exchange) IC's wire format (include/uapi/linux/hyperv.h).

Body: hv_kvp_hdr (operation u8, pool u8, pad u16), then by operation:
    GET, SET    (2572 B at 4)  value_type u32, key_size u32, value_size u32, key[512], value[2048]
    DELETE      (516 B at 4)   key_size u32, key[512]
    ENUMERATE   (2576 B at 4)  index u32, then the GET/SET record
Keys and values are UTF-16LE, NUL-terminated, the terminator counted in their sizes: a key takes
at most 512 bytes, a value 2048. value_type REG_SZ (1) is text; REG_U32 (4) and REG_U64 (8) carry
a number at the start of value, kept as its decimal text (as Linux's daemon does).
Pools: 0 external (the host's items), 1 guest, 2 auto (the guest's intrinsic items: its name,
OS...), 3 auto-external, 4 auto-internal.

Errors (HRESULT): an unknown pool is INVALIDARG, an unknown operation NOT_SUPPORTED, anything
oversized or malformed E_FAIL; a missing key, or an index past the end, is S_CONT (Linux's daemon
answers every failed lookup so, and hosts stop enumerating on it).
"""
from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from drivers.ic.framing import HV_ERROR_NOT_SUPPORTED, HV_INVALIDARG, IcError, Version

CLASS_ID = uuid.UUID("a9a0f4e7-5a45-4d96-b827-8a841e8c03e6")
VERSIONS = (Version(5, 0), Version(4, 0), Version(3, 0))        # the host's (OpenVMM's) list
GUEST_VERSIONS = (Version(4, 0), Version(3, 0), Version(1, 0))  # Linux's

GET, SET, DELETE, ENUMERATE, GET_IP_INFO, SET_IP_INFO = range(6)
POOL_EXTERNAL, POOL_GUEST, POOL_AUTO, POOL_AUTO_EXTERNAL, POOL_AUTO_INTERNAL = range(5)
POOLS = range(5)
MAX_KEY_SIZE, MAX_VALUE_SIZE = 512, 2048
REG_SZ, REG_U32, REG_U64 = 1, 4, 8

_HDR = struct.Struct("<BBH")
_RECORD = struct.Struct("<III")                  # value_type, key_size, value_size
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
_KEY_AT, _VALUE_AT = _RECORD.size, _RECORD.size + MAX_KEY_SIZE
RECORD_SIZE = _VALUE_AT + MAX_VALUE_SIZE         # 2572
_RECORD_AT = {GET: _HDR.size, SET: _HDR.size, ENUMERATE: _HDR.size + _U32.size}
BODY_SIZE = {GET: _HDR.size + RECORD_SIZE, SET: _HDR.size + RECORD_SIZE,
             DELETE: _HDR.size + _U32.size + MAX_KEY_SIZE, ENUMERATE: _HDR.size + _U32.size + RECORD_SIZE}


@dataclass(frozen=True)
class KvpMessage:
    op: int
    pool: int
    key: str | None = None
    value: str | None = None
    index: int | None = None


def text(s: str, limit: int, what: str = "key") -> bytes:
    """s in UTF-16LE with its terminator; ValueError if it does not fit `limit` bytes."""
    if "\0" in s:
        raise ValueError(f"a KVP {what} cannot contain NUL")
    raw = s.encode("utf-16-le") + b"\0\0"
    if len(raw) > limit:
        raise ValueError(f"a KVP {what} takes at most {limit} bytes in UTF-16 with its terminator; "
                         f"{s[:20]!r}... takes {len(raw)}")
    return raw


def _read_text(buf: bytes, at: int, size: int, limit: int, what: str) -> str:
    if not 2 <= size <= limit or size % 2:
        raise IcError(f"KVP {what} size {size} is not an even number of bytes in [2, {limit}]")
    raw = buf[at:at + size]
    if raw[-2:] != b"\0\0":
        raise IcError(f"KVP {what} is not NUL-terminated")
    try:
        s = raw[:-2].decode("utf-16-le")
    except UnicodeDecodeError as exc:
        raise IcError(f"KVP {what} is not UTF-16: {exc}") from None
    if "\0" in s:
        raise IcError(f"KVP {what} has a NUL inside")
    return s


def _record(key: str, value: str) -> bytes:
    k, v = text(key, MAX_KEY_SIZE), text(value, MAX_VALUE_SIZE, "value")
    return (_RECORD.pack(REG_SZ, len(k), len(v))
            + k.ljust(MAX_KEY_SIZE, b"\0") + v.ljust(MAX_VALUE_SIZE, b"\0"))


def _read_record(buf: bytes, at: int, with_value: bool) -> tuple[str, str | None]:
    value_type, key_size, value_size = _RECORD.unpack_from(buf, at)
    key = _read_text(buf, at + _KEY_AT, key_size, MAX_KEY_SIZE, "key")
    if not with_value:
        return key, None
    if value_type == REG_SZ:
        return key, _read_text(buf, at + _VALUE_AT, value_size, MAX_VALUE_SIZE, "value")
    if value_type in (REG_U32, REG_U64):
        return key, str((_U32 if value_type == REG_U32 else _U64).unpack_from(buf, at + _VALUE_AT)[0])
    raise IcError(f"unknown KVP value type {value_type}")


def request(m: KvpMessage) -> bytes:
    """The host's request body (ValueError for what cannot be encoded: never truncated)."""
    if not 0 <= m.pool <= 0xFF:
        raise ValueError(f"a KVP pool is a u8, got {m.pool}")
    head = _HDR.pack(m.op, m.pool, 0)
    if m.op == SET:
        return head + _record(m.key, m.value)
    if m.op == GET:
        return head + _record(m.key, "")
    if m.op == DELETE:
        k = text(m.key, MAX_KEY_SIZE)
        return head + _U32.pack(len(k)) + k.ljust(MAX_KEY_SIZE, b"\0")
    if m.op == ENUMERATE:
        if not 0 <= m.index <= 0xFFFF_FFFF:
            raise ValueError(f"a KVP index is a u32, got {m.index}")
        return head + _U32.pack(m.index) + bytes(RECORD_SIZE)
    raise ValueError(f"unknown KVP operation {m.op}")


def parse_request(body: bytes) -> KvpMessage:
    """The guest reading a request: IcError (with the status to answer) if it cannot be taken."""
    if len(body) < _HDR.size:
        raise IcError(f"a KVP message has a {_HDR.size}-byte header, got {len(body)}")
    op, pool, _ = _HDR.unpack_from(body)
    if op not in (GET, SET, DELETE, ENUMERATE):
        raise IcError(f"KVP operation {op} is not supported", HV_ERROR_NOT_SUPPORTED)
    if pool not in POOLS:
        raise IcError(f"no KVP pool {pool}", HV_INVALIDARG)
    if len(body) < BODY_SIZE[op]:
        raise IcError(f"a KVP operation {op} body is {BODY_SIZE[op]} bytes, got {len(body)}")
    if op == DELETE:
        (key_size,) = _U32.unpack_from(body, _HDR.size)
        return KvpMessage(op, pool, key=_read_text(body, _HDR.size + 4, key_size, MAX_KEY_SIZE, "key"))
    if op == ENUMERATE:
        return KvpMessage(op, pool, index=_U32.unpack_from(body, _HDR.size)[0])
    key, value = _read_record(body, _RECORD_AT[op], with_value=op == SET)
    return KvpMessage(op, pool, key, value)


def reply(body: bytes, key: str, value: str) -> bytes:
    """The guest's answer to a GET or ENUMERATE: the request's buffer with the record filled."""
    at = _RECORD_AT[body[0]]
    return body[:at] + _record(key, value) + body[at + RECORD_SIZE:]


def parse_reply(request: KvpMessage, body: bytes):
    """The host reading an S_OK answer: a GET's value, an ENUMERATE's (key, value), else None.
    The answer must be the request's buffer: same operation, pool, key or index."""
    if len(body) < _HDR.size:
        raise IcError("a KVP answer without a header")
    op, pool, _ = _HDR.unpack_from(body)
    if (op, pool) != (request.op, request.pool):
        raise IcError(f"answer for operation {op} pool {pool}, asked {request.op} pool {request.pool}")
    if op not in (GET, ENUMERATE):
        return None
    if len(body) < _RECORD_AT[op] + RECORD_SIZE:
        raise IcError(f"a {len(body)}-byte KVP answer is short")
    key, value = _read_record(body, _RECORD_AT[op], with_value=True)
    if op == GET:
        if key != request.key:
            raise IcError(f"the answer is for key {key!r}, asked {request.key!r}")
        return value
    if _U32.unpack_from(body, _HDR.size)[0] != request.index:
        raise IcError("the answer is for another index")
    return key, value
