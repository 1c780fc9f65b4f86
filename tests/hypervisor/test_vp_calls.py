"""VP hypercalls: CreateVp, DeleteVp, GetVpRegisters, SetVpRegisters: success paths checked through
introspection and every error the core returns for them."""
from __future__ import annotations

import struct

import pytest

from hypervisor import CallCode, HvStatus, PartitionProperty, Privilege, Register, control
from hypervisor.abi import MAX_VPS, PAGE_SIZE, PARTITION_ID_SELF, PRIVILEGES_GUEST_DEFAULT, VP_INDEX_SELF

from .conftest import (check_conservation, create_vp_in, delete_vp_in, expect, get_regs_in, info, make_child,
                       new_host, reg_assoc, regs_header, rejected)

UNKNOWN_ID = 0x1234_5678
GP = [Register[n] for n in ("RAX", "RCX", "RDX", "RBX", "RSP", "RBP", "RSI", "RDI",
                            "R8", "R9", "R10", "R11", "R12", "R13", "R14", "R15")]
WRITABLE = GP + [Register.RIP, Register.RFLAGS, Register.CR0, Register.CR3, Register.CR4, Register.GUEST_OS_ID]
READ_ONLY = [Register.VP_INDEX, Register.VP_RUNTIME, Register.TIME_REF_COUNT]
UNKNOWN_REGISTERS = [0, 0x00020012, 0x0000FFFF, 0x00C0FFEE, 0xFFFFFFFF]


def set_regs_in(pid, index, assocs, **kw) -> bytes:
    return regs_header(pid, index, **kw) + b"".join(assocs)


# ---- CreateVp --------------------------------------------------------------------------------------

def test_create_vp(host, root):
    c = make_child(host, pool=6, vps=())
    before = info(host, c)
    root.create_vp(c, 0)
    root.create_vp(c, MAX_VPS - 1)
    after = info(host, c)
    assert after["vp_mask"] == 1 | 1 << (MAX_VPS - 1)
    assert after["pool_free"] == before["pool_free"] - 2
    assert after["pool_used"] == before["pool_used"] + 2
    assert [vp.index for vp in c.vps] == [0, MAX_VPS - 1]
    # a fresh VP: zero registers, RFLAGS bit 1 set, VP_INDEX its index
    assert root.get_vp_registers(c, MAX_VPS - 1, [Register.RAX, Register.RIP, Register.RFLAGS, Register.CR0,
                                                  Register.VP_INDEX]) == [0, 0, 2, 0, MAX_VPS - 1]
    check_conservation(host)


def test_create_vp_raw(host, root):
    c = make_child(host, vps=(), map_pages=0)
    expect(root.vp(0), control(CallCode.CREATE_VP), create_vp_in(c.id, 5))
    assert info(host, c)["vp_mask"] == 1 << 5


@pytest.mark.parametrize("pid", [UNKNOWN_ID, PARTITION_ID_SELF, 1, 0])
def test_create_vp_bad_partition(root, pid):
    with rejected(HvStatus.INVALID_PARTITION_ID, root):
        root.create_vp(pid, 3)


@pytest.mark.parametrize("field", ["flags", "padding"])
def test_create_vp_reserved_fields(host, root, child, field):
    expect(root.vp(0), control(CallCode.CREATE_VP), create_vp_in(child.id, 1, **{field: 1}),
           status=HvStatus.INVALID_PARAMETER)


def test_create_vp_proximity_domain(root, child):
    expect(root.vp(0), control(CallCode.CREATE_VP), create_vp_in(child.id, 1, proximity=1),
           status=HvStatus.INVALID_PROXIMITY_DOMAIN_INFO)


def test_create_vp_wrong_state(host, root):
    c = root.create_partition()
    root.deposit_memory(c, host.root_memory.allocate(4))
    with rejected(HvStatus.INVALID_PARTITION_STATE, root):
        root.create_vp(c, 0)  # created
    root.initialize_partition(c)
    root.finalize_partition(c)
    with rejected(HvStatus.INVALID_PARTITION_STATE, root):
        root.create_vp(c, 0)  # finalized


@pytest.mark.parametrize("index", [MAX_VPS, 1000, VP_INDEX_SELF, 0xFFFFFFFF])
def test_create_vp_bad_index(root, child, index):
    with rejected(HvStatus.INVALID_VP_INDEX, root):
        root.create_vp(child, index)


def test_create_existing_vp(root, child):
    with rejected(HvStatus.INVALID_VP_STATE, root):
        root.create_vp(child, 0)


def test_create_vp_needs_a_pool_page(host, root):
    c = make_child(host, pool=3, map_pages=1)  # init, VP 0 and one leaf use the whole pool
    with rejected(HvStatus.INSUFFICIENT_MEMORY, root):
        root.create_vp(c, 1)
    root.deposit_memory(c, host.root_memory.allocate(1))
    root.create_vp(c, 1)
    assert info(host, c)["vp_mask"] == 0b11


def test_create_vp_by_child_is_denied(host, root, child):
    other = make_child(host)
    for target in (None, child, other):
        with rejected(HvStatus.ACCESS_DENIED, child):
            child.create_vp(target, 1)


# ---- DeleteVp --------------------------------------------------------------------------------------

def test_delete_vp(host, root):
    c = make_child(host, pool=5, vps=(0, 1))
    root.set_vp_registers(c, 1, {Register.RAX: 0xABC})
    before = info(host, c)
    root.delete_vp(c, 1)
    after = info(host, c)
    assert after["vp_mask"] == 0b01
    assert (after["pool_free"], after["pool_used"]) == (before["pool_free"] + 1, before["pool_used"] - 1)
    check_conservation(host)
    # created again, it starts from scratch
    root.create_vp(c, 1)
    assert root.get_vp_registers(c, 1, [Register.RAX]) == [0]


def test_delete_vp_drops_its_queued_messages_visibly_and_gives_the_buffers_back(host, root):
    """DeleteVp takes the VP's message queues with it: the sender's port buffers those messages
    held are free again, and the receiving partition's messages_dropped counter says how many
    went undelivered."""
    from hypervisor.synic import PORT_MESSAGE_BUFFERS, port_undelivered, simp_value
    from .test_synic import CONN, PORT, enable_synic, new_guest, post, simp_gpfn, slot, wire
    c = new_guest(host, vps=(0, 1))
    wire(host, c, vp=1)
    c.vp(1).set_registers({Register.SIMP: simp_value(simp_gpfn(1), enable=False)})
    for i in range(PORT_MESSAGE_BUFFERS):
        post(host, b"%d" % i)
    assert port_undelivered(c, PORT) == PORT_MESSAGE_BUFFERS
    assert host.introspect.counters(c)["messages_dropped"] == 0
    root.delete_vp(c, 1)
    assert host.introspect.counters(c)["messages_dropped"] == PORT_MESSAGE_BUFFERS
    assert port_undelivered(c, PORT) == 0
    root.create_vp(c, 1)
    enable_synic(c, 1)
    for i in range(PORT_MESSAGE_BUFFERS):  # every buffer is the sender's again
        root.post_message(CONN, 1, b"again %d" % i)
    assert slot(c, 1).payload == b"again 0"
    check_conservation(host)


def test_deleted_vp_no_longer_runs(host, root, child):
    vp = child.vp(0)
    expect(vp, control(CallCode.GET_PARTITION_ID))
    root.delete_vp(child, 0)
    expect(vp, control(CallCode.GET_PARTITION_ID), status=HvStatus.INVALID_VP_INDEX)


def test_delete_vp_in_finalized_partition(host, root, child):
    root.finalize_partition(child)
    root.delete_vp(child, 0)
    assert info(host, child)["vp_mask"] == 0


@pytest.mark.parametrize("pid", [UNKNOWN_ID, PARTITION_ID_SELF, 1, 0])
def test_delete_vp_bad_partition(root, child, pid):
    with rejected(HvStatus.INVALID_PARTITION_ID, root):
        root.delete_vp(pid, 0)


def test_delete_vp_nonzero_padding(root, child):
    expect(root.vp(0), control(CallCode.DELETE_VP), delete_vp_in(child.id, 0, padding=1),
           status=HvStatus.INVALID_PARAMETER)


@pytest.mark.parametrize("index", [1, MAX_VPS - 1, MAX_VPS, VP_INDEX_SELF])
def test_delete_vp_bad_index(root, child, index):
    with rejected(HvStatus.INVALID_VP_INDEX, root):
        root.delete_vp(child, index)


def test_delete_vp_twice(host, root):
    c = make_child(host, pool=5, vps=(0, 1))
    root.delete_vp(c, 1)
    with rejected(HvStatus.INVALID_VP_INDEX, root):
        root.delete_vp(c, 1)


def test_delete_vp_by_child_is_denied(host, root, child):
    for target in (None, child):
        with rejected(HvStatus.ACCESS_DENIED, child):
            child.delete_vp(target, 0)


# ---- Get/SetVpRegisters ---------------------------------------------------------------------------

VALUES = [0, 1, 0xFFFF_FFFF_FFFF_FFFF, 0x8000_0000_0000_0000, 0x0123_4567_89AB_CDEF]


def test_gp_registers_round_trip_from_the_parent(host, root, child):
    values = {r: (0x1111_1111_0000_0000 * (i + 1) + i) & (2**64 - 1) for i, r in enumerate(WRITABLE)}
    root.set_vp_registers(child, 0, values)
    assert root.get_vp_registers(child, 0, list(values)) == list(values.values())
    # in another order, and several times the same one
    names = list(values)[::-1] + [Register.RAX, Register.RAX]
    assert root.get_vp_registers(child, 0, names) == [values[n] for n in names]


@pytest.mark.parametrize("value", VALUES)
def test_register_values_round_trip_for_the_vp_itself(child, value):
    vp = child.vp(0)
    vp.set_registers({Register.R15: value, Register.CR3: value})
    assert vp.get_registers([Register.R15, Register.CR3]) == [value, value]


def test_registers_are_per_vp(host, root):
    c = make_child(host, pool=6, vps=(0, 1), map_pages=4)
    root.set_vp_registers(c, 0, {Register.RAX: 7})
    root.set_vp_registers(c, 1, {Register.RAX: 9})
    assert root.get_vp_registers(c, 0, [Register.RAX]) == [7]
    assert root.get_vp_registers(c, 1, [Register.RAX]) == [9]
    assert c.vp(1).get_registers([Register.RAX]) == [9]
    assert root.vp(0).get_registers([Register.RAX]) == [0]  # the root's own VP is another VP


def test_set_registers_changes_the_digest(host, root, child):
    d = host.introspect.digest(memory=False)
    root.set_vp_registers(child, 0, {Register.RBX: 1})
    assert host.introspect.digest(memory=False) != d


def test_two_writes_to_one_register_in_a_batch_are_refused(root, child):
    # hvsim refuses them (native/vp.c), so that every write is checked against the same state
    vp = root.vp(0)
    data = set_regs_in(child.id, 0, [reg_assoc(Register.RBX, 5), reg_assoc(Register.RAX, 1),
                                     reg_assoc(Register.RAX, 2)])
    expect(vp, control(CallCode.SET_VP_REGISTERS, rep_count=3), data, status=HvStatus.INVALID_PARAMETER)
    assert root.get_vp_registers(child, 0, [Register.RAX, Register.RBX]) == [0, 0]


@pytest.mark.parametrize("name", READ_ONLY)
def test_read_only_register_refused_on_set(root, child, name):
    with rejected(HvStatus.INVALID_PARAMETER, root):
        root.set_vp_registers(child, 0, {name: 0})
    with rejected(HvStatus.INVALID_PARAMETER, child):
        child.vp(0).set_registers({Register.RAX: 5, name: 0})  # nothing of the batch is applied


def test_read_only_registers_read(host, root, child):
    assert root.get_vp_registers(child, 0, READ_ONLY) == [0, 0, 0]
    assert child.vp(0).get_registers(READ_ONLY) == [0, 0, 0]


@pytest.mark.parametrize("name", UNKNOWN_REGISTERS)
def test_unknown_register(root, child, name):
    with rejected(HvStatus.INVALID_PARAMETER, root):
        root.get_vp_registers(child, 0, [Register.RAX, name])
    with rejected(HvStatus.INVALID_PARAMETER, root):
        root.set_vp_registers(child, 0, {Register.RAX: 1, name: 1})


def test_vp_index_register(host, root):
    c = make_child(host, pool=6, vps=(0, 3), map_pages=8)
    assert root.get_vp_registers(c, 3, [Register.VP_INDEX]) == [3]
    assert c.vp(3).get_registers([Register.VP_INDEX]) == [3]
    assert c.vp(0).get_registers([Register.VP_INDEX]) == [0]
    assert root.vp(1).get_registers([Register.VP_INDEX]) == [1]


def test_child_reads_its_own_vp_through_self(host, root):
    c = make_child(host, pool=6, vps=(0, 1), map_pages=4)  # VP 1's hypercall pages are GPA 2, 3
    root.set_vp_registers(c, 1, {Register.RDX: 0xD1})
    vp1 = c.vp(1)
    r = expect(vp1, control(CallCode.GET_VP_REGISTERS, rep_count=2),
               get_regs_in(PARTITION_ID_SELF, VP_INDEX_SELF, [Register.VP_INDEX, Register.RDX]))
    assert struct.unpack("<QQQQ", r.output) == (1, 0, 0xD1, 0)
    # by its own id instead of SELF, and an explicit index
    r = expect(vp1, control(CallCode.GET_VP_REGISTERS, rep_count=1), get_regs_in(c.id, 0, [Register.VP_INDEX]))
    assert struct.unpack("<QQ", r.output) == (0, 0)
    # set through SELF/VP_INDEX_SELF
    expect(vp1, control(CallCode.SET_VP_REGISTERS, rep_count=1),
           set_regs_in(PARTITION_ID_SELF, VP_INDEX_SELF, [reg_assoc(Register.RSI, 0x51)]))
    assert root.get_vp_registers(c, 1, [Register.RSI]) == [0x51]
    assert root.get_vp_registers(c, 0, [Register.RSI]) == [0]


def test_child_reading_another_partition(host, root, child):
    other = make_child(host)
    for target in (root.id, other.id, UNKNOWN_ID, 0):
        with rejected(HvStatus.INVALID_PARTITION_ID, child):
            child.get_vp_registers(target, 0, [Register.RAX])
        with rejected(HvStatus.INVALID_PARTITION_ID, child):
            child.set_vp_registers(target, 0, {Register.RAX: 1})


def test_root_reading_an_unknown_partition(root):
    with rejected(HvStatus.INVALID_PARTITION_ID, root):
        root.get_vp_registers(UNKNOWN_ID, 0, [Register.RAX])


@pytest.mark.parametrize("index", [1, MAX_VPS, 0xFFFFFFFF])
def test_registers_of_a_missing_vp(root, child, index):
    with rejected(HvStatus.INVALID_VP_INDEX, root):
        root.get_vp_registers(child, index, [Register.RAX])
    with rejected(HvStatus.INVALID_VP_INDEX, root):
        root.set_vp_registers(child, index, {Register.RAX: 1})


def test_vp_index_self_means_nothing_for_another_partition(root, child):
    with rejected(HvStatus.INVALID_VP_INDEX, root):
        root.get_vp_registers(child, VP_INDEX_SELF, [Register.RAX])


@pytest.mark.parametrize("code", [CallCode.GET_VP_REGISTERS, CallCode.SET_VP_REGISTERS])
@pytest.mark.parametrize("kw", [dict(vtl=1), dict(vtl=2), dict(padding=b"\x01\x00\x00"), dict(padding=b"\x00\x00\x80")])
def test_registers_header_reserved_fields(root, child, code, kw):
    if code == CallCode.GET_VP_REGISTERS:
        data = get_regs_in(child.id, 0, [Register.RAX], **kw)
    else:
        data = set_regs_in(child.id, 0, [reg_assoc(Register.RAX, 1)], **kw)
    expect(root.vp(0), control(code, rep_count=1), data, status=HvStatus.INVALID_PARAMETER)


@pytest.mark.parametrize("kw", [dict(value_high=1), dict(value_high=1 << 63), dict(reserved1=1), dict(reserved2=1)])
def test_set_register_high_half_and_reserved(root, child, kw):
    data = set_regs_in(child.id, 0, [reg_assoc(Register.RBX, 3), reg_assoc(Register.RAX, 1, **kw)])
    expect(root.vp(0), control(CallCode.SET_VP_REGISTERS, rep_count=2), data, status=HvStatus.INVALID_PARAMETER)
    assert root.get_vp_registers(child, 0, [Register.RBX]) == [0]


def test_get_registers_output_high_half_is_zero(root, child):
    root.set_vp_registers(child, 0, {Register.RAX: 2**64 - 1})
    r = expect(root.vp(0), control(CallCode.GET_VP_REGISTERS, rep_count=1), get_regs_in(child.id, 0, [Register.RAX]))
    assert struct.unpack("<QQ", r.output) == (2**64 - 1, 0)


def _child_with_privileges(host, privileges):
    root = host.root
    c = root.create_partition()
    root.set_partition_property(c, PartitionProperty.PRIVILEGE_FLAGS, privileges)
    root.deposit_memory(c, host.root_memory.allocate(3))
    root.initialize_partition(c)
    root.create_vp(c, 0)
    root.map_gpa_pages(c, 0, host.root_memory.allocate(2))
    return c


@pytest.mark.parametrize("name,priv,writable", [
    (Register.VP_INDEX, Privilege.ACCESS_VP_INDEX, False),
    (Register.VP_RUNTIME, Privilege.ACCESS_VP_RUNTIME_REG, False),
    (Register.TIME_REF_COUNT, Privilege.ACCESS_PARTITION_REF_COUNTER, False),
    (Register.GUEST_OS_ID, Privilege.ACCESS_HYPERCALL_MSRS, True),
])
def test_synthetic_register_needs_its_privilege(host, name, priv, writable):
    c = _child_with_privileges(host, PRIVILEGES_GUEST_DEFAULT & ~(1 << int(priv)))
    vp = c.vp(0)
    with rejected(HvStatus.ACCESS_DENIED, c):
        vp.get_registers([name])
    if writable:
        with rejected(HvStatus.ACCESS_DENIED, c):
            vp.set_registers({name: 1})
    # architectural registers need no privilege
    vp.set_registers({Register.RAX: 4})
    assert vp.get_registers([Register.RAX]) == [4]
    # the parent reaches them all the same
    assert host.root.get_vp_registers(c, 0, [name]) == [0]


def test_guest_os_id_round_trip(child):
    vp = child.vp(0)
    vp.set_registers({Register.GUEST_OS_ID: 0x8100_0000_0506_0000})
    assert vp.get_registers([Register.GUEST_OS_ID]) == [0x8100_0000_0506_0000]


def test_get_registers_resumes_across_invocations():
    host = new_host(reps_per_call=4)
    root = host.root
    c = make_child(host)
    values = {r: 0x100 + i for i, r in enumerate(GP[:10])}
    root.set_vp_registers(c, 0, values)
    before = host.introspect.counters(root)["hypercalls"]
    assert root.get_vp_registers(c, 0, list(values)) == list(values.values())
    assert host.introspect.counters(root)["hypercalls"] == before + 3
    # raw, resumed at 4: this invocation produces elements 4..7; the output elements of earlier
    # invocations (0..3) and of later ones (8, 9) stay as the caller left them, which is what a
    # guest continuing a rep call in one output page relies on
    vp = root.vp(0)
    root.write(vp.output_gpa, b"\xEE" * PAGE_SIZE)
    r = expect(vp, control(CallCode.GET_VP_REGISTERS, rep_count=10, rep_start=4), get_regs_in(c.id, 0, list(values)),
               reps=8)
    got = struct.unpack("<20Q", r.output)
    assert got[8:16] == sum(((0x104 + i, 0) for i in range(4)), ())
    fill = 0xEEEE_EEEE_EEEE_EEEE
    assert got[:8] == (fill,) * 8
    assert got[16:] == (fill,) * 4


def test_set_registers_resumes_across_invocations():
    host = new_host(reps_per_call=4)
    root = host.root
    c = make_child(host)
    values = {r: 0xF00 + i for i, r in enumerate(GP[:10])}
    before = host.introspect.counters(root)
    root.set_vp_registers(c, 0, values)
    after = host.introspect.counters(root)
    assert (after["hypercalls"] - before["hypercalls"], after["reps"] - before["reps"]) == (3, 10)
    assert root.get_vp_registers(c, 0, list(values)) == list(values.values())


# ---- VPs of a running partition (scheduling; native/vp.c, run.c) -------------------------------------

SUSPEND = 0x00020000  # HV_PARTITION_PROPERTY_SUSPEND


def test_vps_of_a_running_partition(host, root):
    c = make_child(host, pool=6, vps=(0, 1))
    root.set_partition_property(c, SUSPEND, 0)
    with rejected(HvStatus.INVALID_PARTITION_STATE, root):
        root.create_vp(c, 2)  # VPs are added before a partition starts
    with rejected(HvStatus.INVALID_VP_STATE, root):
        root.delete_vp(c, 1)  # a VP taking part in scheduling cannot go
    root.set_partition_property(c, SUSPEND, 1)
    root.delete_vp(c, 1)
    root.create_vp(c, 2)
    assert info(host, c)["vp_mask"] == 0b101
    check_conservation(host)
