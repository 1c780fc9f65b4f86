"""The entry point's dispatch: every one of the 65,536 call codes either names a call of the ABI
(and runs it) or is HV_STATUS_INVALID_HYPERCALL_CODE and changes nothing, and a successful
memory call writes exactly its output bytes into the caller's output page (hyperv-abi.md §1)."""
from __future__ import annotations

import struct

from hypervisor import CallCode, HvStatus, Register, control
from hypervisor import _binding
from hypervisor.abi import PAGE_SIZE

from .conftest import expect, get_regs_in, make_child, unchanged

ALL_CODES = range(0x10000)
KNOWN = {int(c) for c in CallCode}


def test_the_table_holds_exactly_the_calls_of_the_abi():
    with_shape = {code for code in ALL_CODES if _binding.lib.hv_call_name(code) != _binding.ffi.NULL}
    assert with_shape == KNOWN
    assert all(_binding.hv_call_shape(code) is not None for code in KNOWN)


def test_every_code_outside_the_abi_is_an_invalid_code_and_changes_nothing(host, root):
    vp = root.vp(0)
    unknown = [code for code in ALL_CODES if code not in KNOWN]
    n = len(unknown)
    batch = _binding.HypercallBatch(unknown, [vp.input_gpa] * n, [vp.output_gpa] * n)
    with unchanged(host):
        assert batch.issue(host._h, root.id, 0) == n
    statuses = {batch.result(i) for i in range(n)}  # no reps: the result is the bare status
    assert statuses == {int(HvStatus.INVALID_HYPERCALL_CODE)}


def test_every_code_of_the_abi_reaches_its_call(host, root):
    # A plain (non-rep) control word with a zeroed input block: each call fails or succeeds on
    # its own terms, but none is taken for an unknown code.
    vp = root.vp(0)
    codes = sorted(KNOWN)
    n = len(codes)
    vp.store_input(bytes(PAGE_SIZE))
    batch = _binding.HypercallBatch(codes, [vp.input_gpa] * n, [vp.output_gpa] * n)
    assert batch.issue(host._h, root.id, 0) == n
    for i, code in enumerate(codes):
        status = batch.result(i) & 0xFFFF
        assert status != HvStatus.INVALID_HYPERCALL_CODE, hex(code)
        if _binding.hv_call_shape(code)["rep"]:
            assert status == HvStatus.INVALID_HYPERCALL_INPUT  # a rep call needs a rep count


def test_a_call_writes_only_its_own_output_bytes(host, root):
    # GetPartitionId writes 8 bytes; the rest of the output page is the caller's and stays.
    vp = root.vp(0)
    root.write(vp.output_gpa, b"\xa5" * PAGE_SIZE)
    expect(vp, control(CallCode.GET_PARTITION_ID))
    page = root.read(vp.output_gpa, PAGE_SIZE)
    assert struct.unpack_from("<Q", page)[0] == root.id
    assert page[8:] == b"\xa5" * (PAGE_SIZE - 8)


def test_a_resumed_rep_call_writes_only_the_elements_it_completed(host, root):
    # GetVpRegisters with reps [1, 3): element 0 of the output is left as the caller had it.
    child = make_child(host)
    vp = root.vp(0)
    root.write(vp.output_gpa, b"\x5a" * PAGE_SIZE)
    ctl = control(CallCode.GET_VP_REGISTERS, rep_count=3, rep_start=1)
    names = [int(Register.VP_RUNTIME)] * 3
    r = expect(vp, ctl, get_regs_in(child.id, 0, names), reps=3)
    page = root.read(vp.output_gpa, PAGE_SIZE)
    assert page[:16] == b"\x5a" * 16
    assert page[48:] == b"\x5a" * (PAGE_SIZE - 48)
    assert r.status == HvStatus.SUCCESS
