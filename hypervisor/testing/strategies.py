"""Hypothesis strategies for hypercall inputs: control words (valid and malformed) and input
blocks for every call the core implements, built from values a test supplies (partition ids,
page numbers) mixed with arbitrary ones.
"""
from __future__ import annotations

import struct
from typing import Sequence

from hypothesis import strategies as st

from hypervisor import _binding
from hypervisor.abi import (MAX_REP_COUNT, PARTITION_ID_SELF, RESERVED_CONTROL_BITS, CallCode,
                            Control, PartitionProperty, Register)

#: Call codes the core implements, and a few it does not.
IMPLEMENTED = [c for c in CallCode if _binding.hv_call_shape(c) is not None]
UNIMPLEMENTED = [0x0000, 0x0001, 0x004D, 0x0052, 0x0099, 0x7FFF, 0x8001, 0xFFFF]

u64 = st.integers(0, 2**64 - 1)
u32 = st.integers(0, 2**32 - 1)


def call_codes(implemented_only: bool = False) -> st.SearchStrategy[int]:
    codes = st.sampled_from(IMPLEMENTED)
    return codes if implemented_only else st.one_of(codes, codes, codes, st.sampled_from(UNIMPLEMENTED))


@st.composite
def control_words(draw, code: int | None = None, *, malformed: bool = True) -> int:
    """A control word for `code` (or a drawn one): well-formed for the call's shape most of the
    time, and, when `malformed`, sometimes with reserved bits, a bad rep encoding, a variable
    header size or the fast bit where they do not belong."""
    code = draw(call_codes()) if code is None else code
    shape = _binding.hv_call_shape(code)
    rep = bool(shape and shape["rep"])
    if rep:
        count = draw(st.integers(1, 64))
        start = draw(st.integers(0, count - 1))
    else:
        count = start = 0
    ctl = Control(code, rep_count=count, rep_start=start)
    if malformed and draw(st.integers(0, 3)) == 0:
        kind = draw(st.sampled_from(["reserved", "nested", "rep", "varhead", "fast"]))
        if kind == "reserved":
            bit = draw(st.sampled_from([b for b in range(64) if RESERVED_CONTROL_BITS >> b & 1]))
            return ctl.encode() | 1 << bit
        if kind == "nested":
            ctl = Control(code, rep_count=count, rep_start=start, nested=True)
        elif kind == "rep":
            c2 = draw(st.integers(0, MAX_REP_COUNT))
            ctl = Control(code, rep_count=c2, rep_start=draw(st.integers(0, MAX_REP_COUNT)))
        elif kind == "varhead":
            ctl = Control(code, rep_count=count, rep_start=start, varhead_qwords=draw(st.integers(1, 1023)))
        else:
            ctl = Control(code, fast=True, rep_count=count, rep_start=start)
    return ctl.encode()


@st.composite
def call_inputs(draw, code: int, *, partition_ids: list[int], pages: list[int], rep_count: int,
                port_ids: Sequence[int] | None = None, connection_ids: Sequence[int] | None = None) -> bytes:
    """An input block for `code`: its header names one of `partition_ids` (or an arbitrary id),
    its rep elements name `pages` (or arbitrary page numbers); fields are sometimes garbage.
    Port calls name `port_ids` / `connection_ids` (default PORT_IDS) or other ids."""
    pid = draw(st.one_of(st.sampled_from(partition_ids + [PARTITION_ID_SELF]), u64))
    page = st.one_of(st.sampled_from(pages), st.integers(0, 2**20)) if pages else st.integers(0, 2**20)
    small = st.integers(0, 3)
    if code == CallCode.CREATE_PARTITION:
        return draw(st.one_of(st.just(bytes(56)), st.binary(min_size=56, max_size=56)))
    if code in (CallCode.INITIALIZE_PARTITION, CallCode.FINALIZE_PARTITION, CallCode.DELETE_PARTITION):
        return struct.pack("<Q", pid)
    if code == CallCode.GET_PARTITION_PROPERTY:
        return struct.pack("<QII", pid, draw(st.one_of(st.sampled_from(list(PartitionProperty)), u32)), draw(small) // 3)
    if code == CallCode.SET_PARTITION_PROPERTY:
        prop = draw(st.one_of(st.sampled_from(list(PartitionProperty)), u32))
        return struct.pack("<QIIQ", pid, prop, 0, draw(st.one_of(st.integers(0, 10001), u64)))
    if code == CallCode.GET_NEXT_CHILD_PARTITION:
        return struct.pack("<QQ", draw(st.sampled_from([PARTITION_ID_SELF] + partition_ids)),
                           draw(st.sampled_from([0] + partition_ids)))
    if code == CallCode.DEPOSIT_MEMORY:
        return struct.pack("<Q", pid) + b"".join(struct.pack("<Q", draw(page)) for _ in range(rep_count))
    if code in (CallCode.WITHDRAW_MEMORY, CallCode.GET_MEMORY_BALANCE):
        return struct.pack("<QQ", pid, 0 if draw(small) else draw(u64))
    if code == CallCode.MAP_GPA_PAGES:
        header = struct.pack("<QQII", pid, draw(st.integers(0, 2048)), draw(st.integers(0, 8)), 0)
        return header + b"".join(struct.pack("<Q", draw(page)) for _ in range(rep_count))
    if code == CallCode.UNMAP_GPA_PAGES:
        return struct.pack("<QQII", pid, draw(st.integers(0, 2048)), 0 if draw(small) else 1, 0)
    if code == CallCode.CREATE_VP:
        return struct.pack("<QIIQQ", pid, draw(st.integers(0, 70)), 0, 0, 0 if draw(small) else 1)
    if code == CallCode.DELETE_VP:
        return struct.pack("<QII", pid, draw(st.integers(0, 70)), 0)
    reg = st.one_of(st.sampled_from(list(Register)), u32)
    if code == CallCode.GET_VP_REGISTERS:
        return struct.pack("<QIB3x", pid, draw(st.integers(0, 3)), 0) + b"".join(
            struct.pack("<I", draw(reg)) for _ in range(rep_count))
    if code == CallCode.SET_VP_REGISTERS:
        return struct.pack("<QIB3x", pid, draw(st.integers(0, 3)), 0) + b"".join(
            struct.pack("<IIQQQ", draw(reg), 0, 0, draw(u64), 0) for _ in range(rep_count))
    if code == CallCode.CREATE_PORT:
        return draw(create_port_inputs(partition_ids, port_ids))
    if code == CallCode.CONNECT_PORT:
        return draw(connect_port_inputs(partition_ids, connection_ids, port_ids))
    if code == CallCode.DELETE_PORT:
        return draw(delete_port_inputs(partition_ids, port_ids))
    if code == CallCode.DISCONNECT_PORT:
        return draw(disconnect_port_inputs(partition_ids, connection_ids))
    if code == CallCode.POST_MESSAGE:
        return draw(post_message_inputs(connection_ids))
    if code == CallCode.SIGNAL_EVENT:
        return draw(signal_event_inputs(connection_ids))
    return draw(st.binary(max_size=64))


# ---- ports, connections, messages and events ----------------------------------------------------
#
# Layouts (hyperv-abi.md §1.4): CreatePort 56 bytes, ConnectPort 72, DeletePort and
# DisconnectPort 16, PostMessage 256, SignalEvent 8. The block builders below take every field,
# reserved ones included, so a test can set exactly the field it means to break.

#: The small id universe the port strategies favour (and `invariants.check_messages` looks up
#: when it is given no ids): a few ids collide often, which is what makes ports interesting.
PORT_IDS = (1, 2, 3, 0x10, 0x20, 0xFFFFFF)
_c = _binding.constant
PORT_ID_MASK = _c("HV_PORT_ID_MASK")
#: HV_PORT_TYPE values (hvsim refuses monitor ports).
PORT_TYPE_MESSAGE, PORT_TYPE_EVENT, PORT_TYPE_MONITOR = (_c("HV_PORT_TYPE_" + n)
                                                        for n in ("MESSAGE", "EVENT", "MONITOR"))
MESSAGE_TYPE_VMBUS = _c("HV_MESSAGE_TYPE_VMBUS")
MESSAGE_TYPE_TIMER_EXPIRED = _c("HV_MESSAGE_TYPE_TIMER_EXPIRED")
PAYLOAD_MAX = _c("HV_MESSAGE_PAYLOAD_MAX")
EVENT_FLAGS_COUNT = _c("HV_EVENT_FLAGS_COUNT")
SINT_COUNT = _c("HV_SYNIC_SINT_COUNT")


def create_port_block(port_partition: int, port_id: int, connection_partition: int, *, port_type: int,
                      sint: int, vp: int, base_flag: int = 0, flag_count: int = 0, port_vtl: int = 0,
                      min_connection_vtl: int = 0, rsvdz: int = 0, info_reserved: int = 0,
                      info_rsvdz: int = 0, proximity: int = 0) -> bytes:
    """HvCallCreatePort's input block."""
    return (struct.pack("<QIBBHQ", port_partition, port_id, port_vtl, min_connection_vtl, rsvdz,
                        connection_partition)
            + struct.pack("<IIIIHHI", port_type, info_reserved, sint, vp, base_flag, flag_count, info_rsvdz)
            + struct.pack("<Q", proximity))


def connect_port_block(connection_partition: int, connection_id: int, port_partition: int, port_id: int, *,
                       port_type: int, connection_vtl: int = 0, rsvdz: bytes = b"\0\0\0", rsvdz2: int = 0,
                       info_reserved: int = 0, monitor_address: int = 0, info_rsvdz: tuple[int, int] = (0, 0),
                       proximity: int = 0) -> bytes:
    """HvCallConnectPort's input block."""
    return (struct.pack("<QIB3sQII", connection_partition, connection_id, connection_vtl, rsvdz,
                        port_partition, port_id, rsvdz2)
            + struct.pack("<IIQQQ", port_type, info_reserved, monitor_address, *info_rsvdz)
            + struct.pack("<Q", proximity))


def delete_port_block(port_partition: int, port_id: int, padding: int = 0) -> bytes:
    """HvCallDeletePort's input block (also valid as a fast call's RDX, R8)."""
    return struct.pack("<QII", port_partition, port_id, padding)


def disconnect_port_block(connection_partition: int, connection_id: int, padding: int = 0) -> bytes:
    """HvCallDisconnectPort's input block (also valid as a fast call's RDX, R8)."""
    return struct.pack("<QII", connection_partition, connection_id, padding)


def post_message_block(connection_id: int, message_type: int, payload: bytes = b"", *,
                       size: int | None = None, rsvdz: int = 0, tail: bytes = b"") -> bytes:
    """HvCallPostMessage's input block: `payload`, then `tail` (bytes past PayloadSize that must
    never reach the receiver), zero-padded to 240. `size` defaults to len(payload)."""
    body = (bytes(payload) + bytes(tail))[:PAYLOAD_MAX].ljust(PAYLOAD_MAX, b"\0")
    size = len(payload) if size is None else size
    return struct.pack("<IIII", connection_id, rsvdz, message_type, size) + body


def signal_event_block(connection_id: int, flag_number: int = 0, rsvdz: int = 0) -> bytes:
    """HvCallSignalEvent's input block (a fast call passes it in RDX)."""
    return struct.pack("<IHH", connection_id, flag_number, rsvdz)


def rarely(one_in: int) -> st.SearchStrategy[bool]:
    """True about once in `one_in` draws. (Hypothesis favours small integers, 0 above all, so
    "rare" is the top of the range, never 0.)"""
    return st.integers(0, one_in - 1).map(lambda k: k == one_in - 1)


@st.composite
def port_ids(draw, ids: Sequence[int] | None = None) -> int:
    """A port or connection id: mostly one of `ids` (default PORT_IDS), sometimes any 24-bit id,
    sometimes one with a reserved bit (31:24) set."""
    ids = list(ids or PORT_IDS)
    kind = draw(st.integers(0, 9))
    if kind == 8:
        return draw(st.integers(0, PORT_ID_MASK))
    if kind == 9:
        return draw(st.sampled_from(ids)) & PORT_ID_MASK | draw(st.integers(1, 0xFF)) << 24
    return draw(st.sampled_from(ids))


_ids = port_ids  # for the strategies below, whose `port_ids` argument shadows it


@st.composite
def message_types(draw, valid_only: bool = False) -> int:
    """A PostMessage MessageType: mostly valid (non-zero, bit 31 clear; VMBus's 1 often), unless
    `valid_only` one time in six 0 (None), a hypervisor type (bit 31 set; TimerExpired among
    them) or 0xFFFFFFFF."""
    if valid_only or not draw(rarely(6)):
        return draw(st.one_of(st.just(MESSAGE_TYPE_VMBUS), st.integers(1, 0x7FFFFFFF)))
    return draw(st.sampled_from([0, MESSAGE_TYPE_TIMER_EXPIRED, 0xFFFFFFFF, 0x80000000 | draw(u32)]))


def message_payloads(max_size: int = PAYLOAD_MAX) -> st.SearchStrategy[bytes]:
    """A message payload of at most `max_size` (≤ 240) bytes."""
    return st.binary(max_size=min(max_size, PAYLOAD_MAX))


@st.composite
def payload_sizes(draw, payload: bytes, valid_only: bool = False) -> int:
    """The PayloadSize field for `payload`: its length mostly, sometimes shorter (the bytes past it
    must not be delivered), unless `valid_only` sometimes above 240."""
    kind = draw(st.integers(0, 9))
    if kind == 8 and payload:
        return draw(st.integers(0, len(payload) - 1))
    if kind == 9 and not valid_only:
        return draw(st.one_of(st.integers(PAYLOAD_MAX + 1, 256), st.just(0xFF), st.just(0x100), st.just(2**32 - 1)))
    return len(payload)


@st.composite
def post_message_inputs(draw, connection_ids: Sequence[int] | None = None, *, valid_only: bool = False) -> bytes:
    """A PostMessage block on one of `connection_ids` (or another id): type, size and payload
    valid most of the time, otherwise type 0, bit 31 set, size > 240 or RsvdZ set."""
    conn = draw(_ids(connection_ids))
    mtype = draw(message_types(valid_only))
    payload = draw(message_payloads())
    size = draw(payload_sizes(payload, valid_only))
    tail = draw(st.one_of(st.just(b""), st.binary(min_size=1, max_size=16)))
    rsvdz = draw(st.integers(1, 2**32 - 1)) if not valid_only and draw(rarely(16)) else 0
    return post_message_block(conn, mtype, payload, size=size, rsvdz=rsvdz, tail=tail)


@st.composite
def signal_event_inputs(draw, connection_ids: Sequence[int] | None = None, *, valid_only: bool = False) -> bytes:
    """A SignalEvent block: a connection id, a flag number (small, the last of a SINT's 2048, or
    0xFFFF) and, sometimes, RsvdZ set."""
    conn = draw(_ids(connection_ids))
    kind = draw(st.integers(0, 5))
    if kind == 4:
        flag = draw(st.integers(0, EVENT_FLAGS_COUNT - 1))
    else:
        flag = 0xFFFF if kind == 5 else draw(st.integers(0, 3))
    rsvdz = draw(st.integers(1, 0xFFFF)) if not valid_only and draw(rarely(16)) else 0
    return signal_event_block(conn, flag, rsvdz)


@st.composite
def create_port_inputs(draw, partition_ids: Sequence[int], port_ids: Sequence[int] | None = None, *,
                       vps: Sequence[int] = (0, 1, 2, 3), valid_only: bool = False) -> bytes:
    """A CreatePort block: port and connection partition among `partition_ids` (or self, or an
    arbitrary id), a message or event port to SINT 2 (often) or any SINT of one of `vps`; now and
    then a broken field (VTLs, RsvdZ, flag range, SINT ≥ 16, monitor type, proximity info)."""
    pids = _partition_ids(partition_ids, valid_only)
    port_pid, conn_pid = draw(pids), draw(pids)
    port_id = draw(_ids(port_ids))
    ptype = draw(st.sampled_from([PORT_TYPE_MESSAGE, PORT_TYPE_EVENT]))
    sint = draw(st.integers(0, SINT_COUNT - 1)) if draw(rarely(3)) else 2
    vp = draw(st.sampled_from(list(vps)))
    base = count = 0
    if ptype == PORT_TYPE_EVENT:
        count = draw(st.integers(1, 64))
        base = draw(st.integers(0, EVENT_FLAGS_COUNT - count))
    fields = dict(port_type=ptype, sint=sint, vp=vp, base_flag=base, flag_count=count)
    if not valid_only and draw(rarely(5)):
        broken = draw(st.sampled_from(["port_vtl", "min_connection_vtl", "rsvdz", "info_reserved", "info_rsvdz",
                                       "proximity", "sint", "vp", "type", "flags"]))
        if broken == "sint":
            fields["sint"] = draw(st.one_of(st.integers(SINT_COUNT, 255), st.just(2**32 - 1)))
        elif broken == "vp":
            fields["vp"] = draw(st.one_of(st.integers(4, 64), st.just(2**32 - 1)))
        elif broken == "type":
            fields["port_type"] = draw(st.sampled_from([0, PORT_TYPE_MONITOR, 4, 2**32 - 1]))
        elif broken == "flags":
            if ptype == PORT_TYPE_MESSAGE:
                fields["flag_count"] = draw(st.integers(1, 8))
            else:
                fields["flag_count"] = draw(st.sampled_from([0, EVENT_FLAGS_COUNT - base + 1, 0xFFFF]))
        else:
            fields[broken] = draw(st.integers(1, 0xFF))
    return create_port_block(port_pid, port_id, conn_pid, **fields)


@st.composite
def connect_port_inputs(draw, partition_ids: Sequence[int], connection_ids: Sequence[int] | None = None,
                        port_ids: Sequence[int] | None = None, *, valid_only: bool = False) -> bytes:
    """A ConnectPort block: connection and port partitions among `partition_ids` (or self, or an
    arbitrary id), a message or event connection; now and then a broken field."""
    pids = _partition_ids(partition_ids, valid_only)
    conn_pid, port_pid = draw(pids), draw(pids)
    conn_id, port_id = draw(_ids(connection_ids)), draw(_ids(port_ids))
    fields: dict = dict(port_type=draw(st.sampled_from([PORT_TYPE_MESSAGE, PORT_TYPE_EVENT])))
    if not valid_only and draw(rarely(5)):
        broken = draw(st.sampled_from(["connection_vtl", "rsvdz", "rsvdz2", "info_reserved", "monitor_address",
                                       "info_rsvdz", "proximity", "type"]))
        if broken == "rsvdz":
            fields["rsvdz"] = draw(st.sampled_from([b"\1\0\0", b"\0\1\0", b"\0\0\x80"]))
        elif broken == "info_rsvdz":
            fields["info_rsvdz"] = draw(st.sampled_from([(1, 0), (0, 1 << 63)]))
        elif broken == "type":
            fields["port_type"] = draw(st.sampled_from([0, PORT_TYPE_MONITOR, 7]))
        else:
            fields[broken] = draw(st.integers(1, 0xFF)) << (12 if broken == "monitor_address" else 0)
    return connect_port_block(conn_pid, conn_id, port_pid, port_id, **fields)


@st.composite
def delete_port_inputs(draw, partition_ids: Sequence[int], port_ids: Sequence[int] | None = None) -> bytes:
    """A DeletePort block: a partition among `partition_ids` (or self, or any id), a port id,
    now and then non-zero padding."""
    pid = draw(_partition_ids(partition_ids))
    return delete_port_block(pid, draw(_ids(port_ids)), draw(st.integers(1, 2**32 - 1)) if draw(rarely(8)) else 0)


@st.composite
def disconnect_port_inputs(draw, partition_ids: Sequence[int], connection_ids: Sequence[int] | None = None) -> bytes:
    """A DisconnectPort block, like `delete_port_inputs`."""
    pid = draw(_partition_ids(partition_ids))
    return disconnect_port_block(pid, draw(_ids(connection_ids)),
                                 draw(st.integers(1, 2**32 - 1)) if draw(rarely(8)) else 0)


@st.composite
def _partition_ids(draw, partition_ids: Sequence[int], valid_only: bool = False) -> int:
    """One of `partition_ids` or SELF; unless `valid_only`, one time in six any id."""
    if not valid_only and draw(rarely(6)):
        return draw(u64)
    return draw(st.sampled_from(list(partition_ids) + [PARTITION_ID_SELF]))
