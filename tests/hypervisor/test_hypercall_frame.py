"""VirtualProcessor.hypercall's one-crossing path (a frame per VP): it returns what the raw
instruction and a read of the output page return, follows the VP's input and output pages when
they move, and hands out a previous result again only when status, reps and output are equal."""
from __future__ import annotations

import struct

from hypervisor import CallCode, HvStatus, Register, _binding, control
from hypervisor.abi import PARTITION_ID_SELF
from hypervisor.synic import simp_value

from .conftest import make_child

GET_ID = control(CallCode.GET_PARTITION_ID)
GET_BALANCE = control(CallCode.GET_MEMORY_BALANCE)


def raw_result(vp, control_word, input_gpa=None, output_gpa=None, out_len=8):
    """Status, reps and output the way a guest sees them, without vp.hypercall."""
    p = vp.partition
    in_gpa = vp.input_gpa if input_gpa is None else input_gpa
    out_gpa = vp.output_gpa if output_gpa is None else output_gpa
    raw = _binding.hv_hypercall(p.host._h, p.id, vp.index, control_word, in_gpa, out_gpa)
    ok = raw & 0xFFFF == HvStatus.SUCCESS
    return raw & 0xFFFF, raw >> 32 & 0xFFF, _binding.hv_partition_read(p.host._h, p.id, out_gpa, out_len) if ok else b""


def test_result_is_what_the_instruction_and_the_output_page_give(host, root):
    vp = root.vp(0)
    r = vp.hypercall(GET_ID)
    assert (r.status, r.reps_completed, r.output) == raw_result(vp, GET_ID)
    assert r.status is HvStatus.SUCCESS and struct.unpack("<Q", r.output)[0] == root.id
    balance = struct.pack("<QQ", PARTITION_ID_SELF, 0)
    r = vp.hypercall(GET_BALANCE, balance)
    assert r.ok and (r.status, r.reps_completed, r.output) == raw_result(vp, GET_BALANCE, out_len=len(r.output))
    bad = vp.hypercall(0x7777)
    assert bad.status is HvStatus.INVALID_HYPERCALL_CODE and bad.output == b"" and not bad.ok


def test_a_changed_output_is_never_the_previous_result(host, root):
    child = make_child(host)
    first = root.get_vp_registers(child, 0, [Register.SIMP])
    assert root.get_vp_registers(child, 0, [Register.SIMP]) == first
    for page in (2, 3):
        root.set_vp_registers(child, 0, {Register.SIMP: simp_value(page)})
        assert root.get_vp_registers(child, 0, [Register.SIMP]) == [simp_value(page)]


def test_an_equal_result_is_handed_out_again(root):
    vp = root.vp(0)
    a, b = vp.hypercall(GET_ID), vp.hypercall(GET_ID)
    assert a == b and a is b
    vp.hypercall(0x7777)
    c = vp.hypercall(GET_ID)
    assert c == a and c is not a
    # a status that differs, with the same (no) output, is a new result
    assert vp.hypercall(GET_ID, output_gpa=vp.output_gpa + 4).status is HvStatus.INVALID_ALIGNMENT
    assert vp.hypercall(GET_ID).ok


def test_the_frame_follows_the_vps_pages(root):
    vp = root.vp(0)
    assert vp.hypercall(GET_ID).ok
    page = vp.output_gpa
    vp.output_gpa = page + 4
    assert vp.hypercall(GET_ID).status is HvStatus.INVALID_ALIGNMENT
    vp.set_hypercall_pages(vp.input_gpa, page)
    assert vp.hypercall(GET_ID).ok
    vp.input_gpa += 1
    r = vp.hypercall(GET_BALANCE, struct.pack("<QQ", PARTITION_ID_SELF, 0))
    assert r.status is HvStatus.INVALID_ALIGNMENT


def test_control_words_are_taken_modulo_2_to_the_64(root):
    vp = root.vp(0)
    assert vp.hypercall(GET_ID | 1 << 64) == vp.hypercall(GET_ID)
    assert vp.hypercall(GET_ID, output_gpa=vp.output_gpa + (1 << 64)).ok
