"""The hypercall page (threat model case 5, attack A9): HV_X64_MSR_HYPERCALL places a hypervisor
overlay page over a GPA page of the partition. Loads there read the hypercall code; every store
there faults and leaves the page unchanged, whether the guest makes it or the core does on the
guest's behalf (a hypercall's output block, a SynIC page); the partition's own page under the
overlay keeps its bytes and is seen again when the overlay goes or moves."""
from __future__ import annotations

import struct

import pytest

from hypervisor import CallCode, HvStatus, PartitionProperty, Privilege, Register, control
from hypervisor.abi import PAGE_SIZE, PRIVILEGES_GUEST_DEFAULT
from hypervisor.partition import OverlayFault
from hypervisor.synic import PortType, queue_length, simp_value

from .conftest import expect, get_regs_in, make_child, rejected, unchanged

GUEST_OS_ID = 1 << 63 | 0x1 << 56 | 0x0606_0000 << 16  # open source, Linux, kernel 6.6
CODE = bytes([0x0F, 0x01, 0xC1, 0xC3])  # vmcall; ret
IMAGE = CODE + b"\xCC" * (PAGE_SIZE - len(CODE))
PAGE = 3  # a mapped GPA page of make_child's child that no VP uses for its hypercall blocks
PATTERN = bytes(range(256)) * (PAGE_SIZE // 256)


def msr(gpfn: int, enable: bool = True, locked: bool = False) -> int:
    return gpfn << 12 | int(locked) << 1 | int(enable)


@pytest.fixture
def guest(host):
    """A child whose VP 0 has written its guest OS id, and whose page PAGE holds PATTERN."""
    c = make_child(host)
    c.vp(0).set_registers({Register.GUEST_OS_ID: GUEST_OS_ID})
    c.write(PAGE * PAGE_SIZE, PATTERN)
    return c


def test_enabled_the_page_reads_as_the_hypercall_code_and_int3(guest):
    guest.vp(0).set_registers({Register.HYPERCALL: msr(PAGE)})
    assert guest.vp(0).get_registers([Register.HYPERCALL]) == [msr(PAGE)]
    assert guest.read(PAGE * PAGE_SIZE, PAGE_SIZE) == IMAGE
    # a load straddling into the overlay sees the partition's page, then the overlay
    assert guest.read(PAGE * PAGE_SIZE - 2, 6) == bytes(2) + CODE


@pytest.mark.parametrize("gpa,length", [(PAGE * PAGE_SIZE, 1), (PAGE * PAGE_SIZE + 100, 8),
                                        (PAGE * PAGE_SIZE, PAGE_SIZE), (PAGE * PAGE_SIZE - 4, 8),
                                        (PAGE * PAGE_SIZE + PAGE_SIZE - 1, 2)])
def test_a_store_to_the_overlay_faults_names_it_and_changes_nothing(host, guest, gpa, length):
    guest.vp(0).set_registers({Register.HYPERCALL: msr(PAGE)})
    with unchanged(host, (guest, guest.vp(0).input_gpa)):
        with pytest.raises(OverlayFault, match="hypercall page") as fault:
            guest.write(gpa, b"\x90" * length)
    assert fault.value.overlay_gpa == PAGE * PAGE_SIZE
    assert guest.read(PAGE * PAGE_SIZE, PAGE_SIZE) == IMAGE
    # nothing of a straddling store reached the neighbouring pages either
    assert guest.read((PAGE - 1) * PAGE_SIZE, PAGE_SIZE) == bytes(PAGE_SIZE)


def test_the_page_under_the_overlay_is_kept_and_seen_again_when_it_goes_or_moves(guest):
    vp = guest.vp(0)
    vp.set_registers({Register.HYPERCALL: msr(PAGE)})
    vp.set_registers({Register.HYPERCALL: msr(PAGE, enable=False)})
    assert guest.read(PAGE * PAGE_SIZE, PAGE_SIZE) == PATTERN
    vp.set_registers({Register.HYPERCALL: msr(PAGE)})
    vp.set_registers({Register.HYPERCALL: msr(PAGE - 1)})  # moved: PAGE is the guest's again
    assert guest.read(PAGE * PAGE_SIZE, PAGE_SIZE) == PATTERN
    assert guest.read((PAGE - 1) * PAGE_SIZE, PAGE_SIZE) == IMAGE
    guest.write(PAGE * PAGE_SIZE, b"ok")  # and writable again


def test_a_hypercall_cannot_write_its_output_into_the_overlay(host, root, guest):
    vp = guest.vp(0)
    vp.set_registers({Register.HYPERCALL: msr(PAGE)})
    expect(vp, control(CallCode.GET_VP_REGISTERS, rep_count=1), get_regs_in(guest.id, 0, [Register.RAX]),
           status=HvStatus.INVALID_ALIGNMENT, output_gpa=PAGE * PAGE_SIZE)
    assert guest.read(PAGE * PAGE_SIZE, PAGE_SIZE) == IMAGE
    # the input block may be read from it (a load): the call reads the overlay's bytes
    r = vp.hypercall(control(CallCode.GET_VP_REGISTERS, rep_count=1), input_gpa=PAGE * PAGE_SIZE)
    assert r.status == HvStatus.INVALID_PARAMETER  # 0f 01 c1 c3 cc.. is not a valid header


def test_the_synic_never_writes_into_the_overlay(host, root, guest):
    vp = guest.vp(0)
    guest.write(PAGE * PAGE_SIZE, bytes(PAGE_SIZE))   # every message slot free
    vp.set_registers({Register.HYPERCALL: msr(PAGE)})
    with rejected(HvStatus.INVALID_PARAMETER, guest):
        vp.set_registers({Register.SIMP: simp_value(PAGE)})
    # a message page placed first and overlaid later takes no message: it stays queued
    vp.set_registers({Register.HYPERCALL: msr(PAGE, enable=False)})
    vp.set_registers({Register.SCONTROL: 1, Register.SIMP: simp_value(PAGE), Register.SINT2: 0x30})
    vp.set_registers({Register.HYPERCALL: msr(PAGE)})
    root.deposit_memory(None, host.root_memory.allocate(1))   # the connection's page
    root.create_port(guest, 7, port_type=PortType.MESSAGE, target_sint=2, target_vp=0, connection_partition=root)
    root.connect_port(None, 7, guest, 7)
    root.post_message(7, 1, b"to the overlay?")
    assert guest.read(PAGE * PAGE_SIZE, PAGE_SIZE) == IMAGE
    assert queue_length(guest, 0, 2) == 1
    vp.set_registers({Register.HYPERCALL: msr(PAGE, enable=False)})
    vp.set_registers({Register.EOM: 0})
    assert queue_length(guest, 0, 2) == 0
    assert b"to the overlay?" in guest.read(PAGE * PAGE_SIZE + 2 * 256, 256)


def test_enabling_needs_a_guest_os_id_first(host):
    c = make_child(host)
    with rejected(HvStatus.INVALID_PARAMETER, c):
        c.vp(0).set_registers({Register.HYPERCALL: msr(PAGE)})
    # checked against the state before the call: both in one batch are refused too
    with rejected(HvStatus.INVALID_PARAMETER, c):
        c.vp(0).set_registers({Register.GUEST_OS_ID: GUEST_OS_ID, Register.HYPERCALL: msr(PAGE)})
    c.vp(0).set_registers({Register.HYPERCALL: 0})  # disabling is always allowed
    c.write(PAGE * PAGE_SIZE, b"still mine")


def test_the_msr_needs_access_hypercall_msrs(host, root):
    c = root.create_partition()
    root.set_partition_property(c, PartitionProperty.PRIVILEGE_FLAGS,
                                PRIVILEGES_GUEST_DEFAULT & ~(1 << Privilege.ACCESS_HYPERCALL_MSRS))
    root.deposit_memory(c, host.root_memory.allocate(4))
    root.initialize_partition(c)
    root.create_vp(c, 0)
    root.map_gpa_pages(c, 0, host.root_memory.allocate(4))
    with rejected(HvStatus.ACCESS_DENIED, c):
        c.vp(0).set_registers({Register.HYPERCALL: 0})
    with rejected(HvStatus.ACCESS_DENIED, c):
        c.vp(0).get_registers([Register.HYPERCALL])
    # the parent, with AccessVpRegisters, may set it for the child
    root.set_vp_registers(c, 0, {Register.GUEST_OS_ID: GUEST_OS_ID})
    root.set_vp_registers(c, 0, {Register.HYPERCALL: msr(PAGE)})
    with pytest.raises(OverlayFault):
        c.write(PAGE * PAGE_SIZE, b"x")


@pytest.mark.parametrize("value", [msr(PAGE) | 1 << 2, msr(PAGE) | 0x800, msr(100), msr(1 << 40)])
def test_reserved_bits_and_pages_the_partition_has_not_mapped_are_refused(guest, value):
    with rejected(HvStatus.INVALID_PARAMETER, guest):
        guest.vp(0).set_registers({Register.HYPERCALL: value})
    guest.write(PAGE * PAGE_SIZE, b"still mine")


def test_a_locked_msr_is_immutable(guest):
    vp = guest.vp(0)
    vp.set_registers({Register.HYPERCALL: msr(PAGE, locked=True)})
    for value in (0, msr(PAGE - 1), msr(PAGE, locked=True)):
        with rejected(HvStatus.INVALID_PARAMETER, guest):
            vp.set_registers({Register.HYPERCALL: value})
    assert guest.read(PAGE * PAGE_SIZE, 4) == CODE


def test_the_msr_is_partition_wide(host, root):
    c = make_child(host, pool=6, vps=(0, 1), map_pages=8)
    c.vp(0).set_registers({Register.GUEST_OS_ID: GUEST_OS_ID})
    c.vp(0).set_registers({Register.HYPERCALL: msr(6)})
    assert c.vp(1).get_registers([Register.HYPERCALL]) == [msr(6)]
    with pytest.raises(OverlayFault):
        c.write(6 * PAGE_SIZE, b"x")


def test_the_root_may_not_place_it_on_a_page_a_child_granted_it(host, root, guest):
    root.vp(0).set_registers({Register.GUEST_OS_ID: GUEST_OS_ID})
    page = host.root_memory.allocate(1)[0]  # a root page of its own (GPA == SPA for the root)
    root.write(page * PAGE_SIZE, PATTERN)
    root.vp(0).set_registers({Register.HYPERCALL: msr(page)})
    assert root.read(page * PAGE_SIZE, PAGE_SIZE) == IMAGE
    with pytest.raises(OverlayFault):
        root.write(page * PAGE_SIZE, b"x")
    root.vp(0).set_registers({Register.HYPERCALL: 0})
    assert root.read(page * PAGE_SIZE, PAGE_SIZE) == PATTERN
    # a page the child granted the root is reachable by the root, but it is not the root's
    child_pfn = host.introspect.reach(guest)[PAGE][0]
    host.grants.create(guest, 1, [PAGE])
    assert root.read(child_pfn * PAGE_SIZE, 16) == PATTERN[:16]
    with rejected(HvStatus.INVALID_PARAMETER, root):
        root.vp(0).set_registers({Register.HYPERCALL: msr(child_pfn)})
