"""Hypothesis strategies for hypercall inputs: control words (valid and malformed) and input
blocks for every call the core implements, built from values a test supplies (partition ids,
page numbers) mixed with arbitrary ones.
"""
from __future__ import annotations

import struct

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
def call_inputs(draw, code: int, *, partition_ids: list[int], pages: list[int], rep_count: int) -> bytes:
    """An input block for `code`: its header names one of `partition_ids` (or an arbitrary id),
    its rep elements name `pages` (or arbitrary page numbers); fields are sometimes garbage."""
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
    return draw(st.binary(max_size=64))
