"""The SynIC of each VP (hyperv-abi.md §2): its registers through Get/SetVpRegisters, message
delivery into the SIM page (free slot, busy slot + MessagePending, EOM rescans, FIFO), event
flags in the SIEF page, the synthetic timers, and HvMessage parsing. Messages are posted through
a root -> child connection; the port calls themselves are tested in test_ports.py.

Layout used throughout: a child with 32 GPA pages; VP i's SIM page is GPA page 16 + 2i and its
SIEF page 17 + 2i (VP i's hypercall pages are 2i, 2i + 1).
"""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, strategies as st

from hypervisor import HvStatus, Privilege, Register
from hypervisor.abi import PAGE_SIZE, PRIVILEGES_GUEST_DEFAULT, PartitionProperty
from hypervisor.synic import (EVENT_FLAGS_COUNT, MESSAGE_SIZE, PAYLOAD_MAX, SINT_RESET, HvMessage, MessageType,
                              PortType, clear_event_flag, clear_message_slot, event_flag_set, interrupt_count,
                              port_undelivered, queue_length, read_message_slot, siefp_value, simp_value,
                              sint_value, stimer_config_register, stimer_config_value, stimer_count_register,
                              timer_state)

from .conftest import new_host, rejected

VMBUS_SINT = 2
PORT, CONN = 0x10, 0x20        # the message port in the child and the root's connection to it
EVENT_PORT, EVENT_CONN = 0x11, 0x21
BASE_FLAG, FLAG_COUNT = 40, 8


def simp_gpfn(vp: int = 0) -> int:
    return 16 + 2 * vp


def siefp_gpfn(vp: int = 0) -> int:
    return 17 + 2 * vp


def sint_reg(n: int) -> Register:
    return Register[f"SINT{n}"]


def new_guest(host, *, vps=(0,), pool: int = 8, synic: bool = True, privileges: int | None = None):
    """A child of the root with 32 mapped pages and, if `synic`, each VP's SynIC enabled (SIM
    and SIEF pages, SINT2 unmasked with vector 0x32)."""
    root = host.root
    child = root.create_partition()
    if privileges is not None:
        root.set_partition_property(child, PartitionProperty.PRIVILEGE_FLAGS, privileges)
    root.deposit_memory(child, host.root_memory.allocate(pool))
    root.initialize_partition(child)
    for i in vps:
        root.create_vp(child, i)
    root.map_gpa_pages(child, 0, host.root_memory.allocate(32))
    if synic:
        for i in vps:
            enable_synic(child, i)
    return child


def enable_synic(p, vp: int = 0, *, sints=(VMBUS_SINT,), simp: bool = True, siefp: bool = True,
                 scontrol: bool = True) -> None:
    regs = {Register.SIMP: simp_value(simp_gpfn(vp), simp), Register.SIEFP: siefp_value(siefp_gpfn(vp), siefp),
            Register.SCONTROL: int(scontrol)}
    regs.update({sint_reg(s): sint_value(0x30 + s) for s in sints})
    p.vp(vp).set_registers(regs)


def wire(host, child, *, vp: int = 0, sint: int = VMBUS_SINT, conn_base: int = 0) -> None:
    """Root -> child: a message port (PORT) and an event port (EVENT_PORT) in the child, the root
    connected to them as CONN + conn_base and EVENT_CONN + conn_base. The ports cost two pages of
    the child's pool, the connections two of the root's (deposited here)."""
    root = host.root
    root.deposit_memory(None, host.root_memory.allocate(2))
    root.create_port(child, PORT, port_type=PortType.MESSAGE, target_sint=sint, target_vp=vp,
                     connection_partition=root)
    root.connect_port(None, CONN + conn_base, child, PORT)
    root.create_port(child, EVENT_PORT, port_type=PortType.EVENT, target_sint=sint, target_vp=vp,
                     base_flag=BASE_FLAG, flag_count=FLAG_COUNT, connection_partition=root)
    root.connect_port(None, EVENT_CONN + conn_base, child, EVENT_PORT, port_type=PortType.EVENT)


@pytest.fixture
def guest(host):
    child = new_guest(host)
    wire(host, child)
    return child


def slot(child, vp: int = 0, sint: int = VMBUS_SINT) -> HvMessage:
    return read_message_slot(child, simp_gpfn(vp), sint)


def ack(child, vp: int = 0, sint: int = VMBUS_SINT) -> None:
    """The Linux guest's protocol: clear the slot, then write EOM only if MessagePending."""
    if clear_message_slot(child, simp_gpfn(vp), sint):
        child.vp(vp).set_registers({Register.EOM: 0})


def post(host, payload: bytes, mtype: int = MessageType.VMBUS) -> None:
    host.root.post_message(CONN, mtype, payload)


# ---- registers ------------------------------------------------------------------------------------

def test_reset_values(host):
    child = new_guest(host, synic=False)
    names = [sint_reg(i) for i in range(16)] + [Register.SCONTROL, Register.SIMP, Register.SIEFP]
    assert child.vp(0).get_registers(names) == [SINT_RESET] * 16 + [0, 0, 0]
    assert SINT_RESET == 0x10000
    timers = [stimer_config_register(i) for i in range(4)] + [stimer_count_register(i) for i in range(4)]
    assert child.vp(0).get_registers(timers) == [0] * 8


def test_register_round_trip(host):
    child = new_guest(host, synic=False)
    values = {Register.SCONTROL: 1, Register.SIMP: simp_value(simp_gpfn()), Register.SIEFP: siefp_value(siefp_gpfn()),
              Register.SINT0: sint_value(0x10), Register.SINT5: sint_value(0xFF, auto_eoi=True),
              Register.SINT7: sint_value(0x40, polling=True), Register.SINT9: sint_value(0, masked=True),
              Register.SINT15: sint_value(0x20, masked=True, auto_eoi=True)}
    child.vp(0).set_registers(values)
    assert child.vp(0).get_registers(list(values)) == list(values.values())
    # the parent reaches its child's SynIC with AccessVpRegisters
    host.root.set_vp_registers(child, 0, {Register.SINT3: sint_value(0x33)})
    assert host.root.get_vp_registers(child, 0, [Register.SINT3]) == [0x33]
    # a disabled page may name any GPFN, mapped or not
    child.vp(0).set_registers({Register.SIMP: simp_value(0xFFFFF, enable=False)})
    assert child.vp(0).get_registers([Register.SIMP]) == [0xFFFFF << 12]


def test_sversion_reads_one_and_is_read_only(host):
    child = new_guest(host)
    assert child.vp(0).get_registers([Register.SVERSION]) == [1]
    with rejected(HvStatus.INVALID_PARAMETER, child):
        child.vp(0).set_registers({Register.SVERSION: 1})


def test_eom_reads_zero_and_accepts_any_value(host, guest):
    guest.vp(0).set_registers({Register.EOM: 0xDEAD_BEEF})
    assert guest.vp(0).get_registers([Register.EOM]) == [0]


@pytest.mark.parametrize("value", [
    sint_value(0x30) | 1 << 8, sint_value(0x30) | 1 << 15, sint_value(0x30) | 1 << 19, sint_value(0x30) | 1 << 20,
    sint_value(0x30) | 1 << 63, sint_value(0), sint_value(15), sint_value(0x0F, auto_eoi=True)])
def test_bad_sint_values(host, value):
    child = new_guest(host, synic=False)
    with rejected(HvStatus.INVALID_PARAMETER, child):
        child.vp(0).set_registers({Register.SINT4: value})


@pytest.mark.parametrize("name,value", [
    (Register.SCONTROL, 2), (Register.SCONTROL, 1 << 63),
    (Register.SIMP, simp_value(16) | 1 << 1), (Register.SIMP, simp_value(16) | 1 << 11),
    (Register.SIEFP, siefp_value(17) | 0x800),
    (Register.SIMP, simp_value(200)),            # not mapped
    (Register.SIEFP, siefp_value(1 << 30)),      # beyond the GPA space
])
def test_bad_control_values(host, name, value):
    child = new_guest(host, synic=False)
    with rejected(HvStatus.INVALID_PARAMETER, child):
        child.vp(0).set_registers({name: value})


def test_synic_page_must_be_mapped_writable(host):
    root = host.root
    child = new_guest(host, synic=False)
    root.map_gpa_pages(child, 40, host.root_memory.allocate(1), flags=1)  # readable only
    for name, value in ((Register.SIMP, simp_value(40)), (Register.SIEFP, siefp_value(40))):
        with rejected(HvStatus.INVALID_PARAMETER, child):
            child.vp(0).set_registers({name: value})


def test_a_batch_with_one_bad_register_changes_nothing(host):
    child = new_guest(host, synic=False)
    with rejected(HvStatus.INVALID_PARAMETER, child):
        child.vp(0).set_registers({Register.SIMP: simp_value(16), Register.SCONTROL: 1, Register.SINT2: sint_value(3)})
    assert child.vp(0).get_registers([Register.SIMP, Register.SCONTROL]) == [0, 0]


def test_synic_registers_need_their_privileges(host):
    no_synic = PRIVILEGES_GUEST_DEFAULT & ~(1 << Privilege.ACCESS_SYNIC_REGS)
    child = new_guest(host, synic=False, privileges=no_synic)
    for name in (Register.SINT0, Register.SCONTROL, Register.SVERSION, Register.SIMP, Register.EOM):
        with rejected(HvStatus.ACCESS_DENIED, child):
            child.vp(0).get_registers([name])
    with rejected(HvStatus.ACCESS_DENIED, child):
        child.vp(0).set_registers({Register.EOM: 0})
    child.vp(0).set_registers({stimer_count_register(0): 5})  # timers are a separate privilege

    no_timers = PRIVILEGES_GUEST_DEFAULT & ~(1 << Privilege.ACCESS_SYNTHETIC_TIMER_REGS)
    other = new_guest(host, synic=False, privileges=no_timers)
    for name in (stimer_config_register(0), stimer_count_register(3)):
        with rejected(HvStatus.ACCESS_DENIED, other):
            other.vp(0).get_registers([name])
    other.vp(0).set_registers({Register.SINT0: sint_value(0x20)})


# ---- message delivery ----------------------------------------------------------------------------------

def test_message_lands_in_free_slot_with_its_header(host, guest):
    assert slot(guest).empty
    post(host, b"hello, guest")
    m = slot(guest)
    assert (m.message_type, m.payload_size, m.pending, m.origin, m.payload) == (
        MessageType.VMBUS, 12, False, PORT, b"hello, guest")
    raw = guest.read(simp_gpfn() * PAGE_SIZE + VMBUS_SINT * MESSAGE_SIZE, MESSAGE_SIZE)
    assert raw[6:8] == b"\0\0" and raw[16 + 12:] == bytes(MESSAGE_SIZE - 28)  # no stale bytes
    assert queue_length(guest, 0, VMBUS_SINT) == 0
    assert interrupt_count(guest, 0, VMBUS_SINT) == 1
    # other slots stay empty
    assert all(read_message_slot(guest, simp_gpfn(), s).empty for s in range(16) if s != VMBUS_SINT)


def test_busy_slot_queues_and_sets_message_pending(host, guest):
    post(host, b"one")
    post(host, b"two")
    m = slot(guest)
    assert m.payload == b"one" and m.pending
    assert queue_length(guest, 0, VMBUS_SINT) == 1
    assert port_undelivered(guest, PORT) == 1
    assert interrupt_count(guest, 0, VMBUS_SINT) == 1  # a queued message raises nothing


def test_clear_and_eom_deliver_the_next_in_order(host, guest):
    for i in range(5):
        post(host, b"msg %d" % i)
    seen = []
    for i in range(5):
        m = slot(guest)
        seen.append(m.payload)
        assert m.pending == (i < 4)  # MessagePending says more are queued behind it
        ack(guest)
    assert seen == [b"msg %d" % i for i in range(5)]
    assert slot(guest).empty and queue_length(guest, 0, VMBUS_SINT) == 0
    assert interrupt_count(guest, 0, VMBUS_SINT) == 5


def test_eom_with_the_slot_still_busy_delivers_nothing(host, guest):
    post(host, b"a")
    post(host, b"b")
    guest.vp(0).set_registers({Register.EOM: 0})
    assert slot(guest).payload == b"a" and queue_length(guest, 0, VMBUS_SINT) == 1


def test_clearing_without_eom_waits_for_the_next_post(host, guest):
    """Queues are re-examined when a message is queued: a post behind a cleared slot delivers the
    oldest queued message first (FIFO), not the new one."""
    post(host, b"a")
    post(host, b"b")
    guest.write(simp_gpfn() * PAGE_SIZE + VMBUS_SINT * MESSAGE_SIZE, bytes(4))  # type = None, no EOM
    post(host, b"c")
    assert slot(guest).payload == b"b" and slot(guest).pending
    assert queue_length(guest, 0, VMBUS_SINT) == 1


def test_masked_sint_refuses_the_post_and_queues_nothing(host, guest):
    guest.vp(0).set_registers({Register.SINT2: sint_value(0x32, masked=True)})
    with rejected(HvStatus.INVALID_SYNIC_STATE, host.root):
        post(host, b"x")
    assert queue_length(guest, 0, VMBUS_SINT) == 0 and slot(guest).empty


def test_disabled_synic_refuses_the_post(host, guest):
    guest.vp(0).set_registers({Register.SCONTROL: 0})
    with rejected(HvStatus.INVALID_SYNIC_STATE, host.root):
        post(host, b"x")


def test_disabled_simp_queues_until_enabled(host, guest):
    guest.vp(0).set_registers({Register.SIMP: simp_value(simp_gpfn(), enable=False)})
    post(host, b"early")
    post(host, b"later")
    assert queue_length(guest, 0, VMBUS_SINT) == 2 and slot(guest).empty
    assert interrupt_count(guest, 0, VMBUS_SINT) == 0
    guest.vp(0).set_registers({Register.SIMP: simp_value(simp_gpfn())})
    # enabling the page delivers what waited, without an EOM from the guest
    assert slot(guest).payload == b"early" and slot(guest).pending
    assert queue_length(guest, 0, VMBUS_SINT) == 1 and interrupt_count(guest, 0, VMBUS_SINT) == 1
    ack(guest)
    assert slot(guest).payload == b"later" and queue_length(guest, 0, VMBUS_SINT) == 0


def test_enabling_the_synic_delivers_what_waited(host, guest):
    guest.vp(0).set_registers({Register.SIMP: simp_value(simp_gpfn(), enable=False)})
    post(host, b"queued")
    guest.vp(0).set_registers({Register.SCONTROL: 0})
    guest.vp(0).set_registers({Register.SIMP: simp_value(simp_gpfn())})
    assert slot(guest).empty and queue_length(guest, 0, VMBUS_SINT) == 1  # the SynIC is still off
    guest.vp(0).set_registers({Register.SCONTROL: 1})
    assert slot(guest).payload == b"queued" and queue_length(guest, 0, VMBUS_SINT) == 0
    assert interrupt_count(guest, 0, VMBUS_SINT) == 1


def test_simp_unmapped_after_enable_keeps_messages_queued(host, guest):
    host.root.unmap_gpa_pages(guest, simp_gpfn(), 1)
    post(host, b"x")
    assert queue_length(guest, 0, VMBUS_SINT) == 1


def test_polled_sint_gets_messages_without_interrupts(host, guest):
    guest.vp(0).set_registers({Register.SINT2: sint_value(0x32, polling=True)})
    post(host, b"x")
    assert slot(guest).payload == b"x" and interrupt_count(guest, 0, VMBUS_SINT) == 0


def test_sint_masked_after_queueing_delivers_without_interrupt(host, guest):
    post(host, b"a")
    post(host, b"b")
    guest.vp(0).set_registers({Register.SINT2: sint_value(0x32, masked=True)})
    ack(guest)
    assert slot(guest).payload == b"b" and interrupt_count(guest, 0, VMBUS_SINT) == 1


def test_deliveries_charge_the_receiving_vp():
    host = new_host(costs={"message": "3us", "event": "5us", "interrupt": "7us"})
    guest = new_guest(host)
    wire(host, guest)

    def debt() -> int:
        return guest.vp(0).info()["debt_ns"]

    d = debt()
    post(host, b"x")
    assert debt() - d == 3_000 + 7_000         # message delivery + the interrupt it raises
    d = debt()
    post(host, b"y")                           # queued behind a busy slot: nothing delivered
    assert debt() == d
    host.root.signal_event(EVENT_CONN, 0)
    assert debt() - d == 5_000 + 7_000
    d = debt()
    host.root.signal_event(EVENT_CONN, 0)      # already set
    assert debt() == d


def test_messages_of_two_vps_do_not_mix(host):
    child = new_guest(host, vps=(0, 1))
    wire(host, child, vp=1)
    post(host, b"for vp1")
    assert slot(child, vp=1).payload == b"for vp1" and slot(child, vp=0).empty


# ---- event flags -------------------------------------------------------------------------------------

def test_signal_sets_the_right_bit_and_interrupts_on_clear_to_set(host, guest):
    root = host.root
    root.signal_event(EVENT_CONN, 3)
    flag = BASE_FLAG + 3
    assert event_flag_set(guest, siefp_gpfn(), VMBUS_SINT, flag)
    area = guest.read(siefp_gpfn() * PAGE_SIZE + VMBUS_SINT * 256, 256)
    assert area == bytes(flag // 8) + bytes([1 << flag % 8]) + bytes(255 - flag // 8)
    assert interrupt_count(guest, 0, VMBUS_SINT) == 1
    root.signal_event(EVENT_CONN, 3)                # already set: no second edge
    assert interrupt_count(guest, 0, VMBUS_SINT) == 1
    root.signal_event(EVENT_CONN, 4, fast=False)    # another flag: a new edge
    assert interrupt_count(guest, 0, VMBUS_SINT) == 2
    assert clear_event_flag(guest, siefp_gpfn(), VMBUS_SINT, flag)
    root.signal_event(EVENT_CONN, 3)
    assert interrupt_count(guest, 0, VMBUS_SINT) == 3
    # nothing leaked into other SINTs' areas or into the SIM page
    page = guest.read(siefp_gpfn() * PAGE_SIZE, PAGE_SIZE)
    assert page[:VMBUS_SINT * 256] == bytes(VMBUS_SINT * 256) and page[(VMBUS_SINT + 1) * 256:] == bytes(13 * 256)
    assert slot(guest).empty


def test_event_flag_bounds_of_the_helpers(host, guest):
    with pytest.raises(ValueError):
        event_flag_set(guest, siefp_gpfn(), VMBUS_SINT, EVENT_FLAGS_COUNT)
    with pytest.raises(ValueError):
        read_message_slot(guest, simp_gpfn(), 16)


def test_signal_with_siefp_disabled_is_invalid_synic_state(host, guest):
    guest.vp(0).set_registers({Register.SIEFP: siefp_value(siefp_gpfn(), enable=False)})
    with rejected(HvStatus.INVALID_SYNIC_STATE, host.root):
        host.root.signal_event(EVENT_CONN, 0)


# ---- the built-in tick guest acknowledges (hv_synic_consume) --------------------------------------------

def test_tick_guest_consumes_messages_and_flags(host, guest):
    guest.vp(0).run_builtin("tick", work="5us")
    host.root.resume_partition(guest)
    for i in range(3):
        post(host, b"m%d" % i)
    host.root.signal_event(EVENT_CONN, 0)
    host.run_for("1ms")
    assert slot(guest).empty and queue_length(guest, 0, VMBUS_SINT) == 0
    assert not event_flag_set(guest, siefp_gpfn(), VMBUS_SINT, BASE_FLAG)
    assert port_undelivered(guest, PORT) == 0
    assert interrupt_count(guest, 0, VMBUS_SINT) == 4  # three messages, one event


# ---- synthetic timers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [1 << 13, 1 << 15, 1 << 20, 1 << 63, stimer_config_value(2) | 1 << 12])
def test_bad_stimer_config(host, value):
    child = new_guest(host)
    with rejected(HvStatus.INVALID_PARAMETER, child):
        child.vp(0).set_registers({stimer_config_register(1): value})


def test_stimer_config_and_count_round_trip(host):
    child = new_guest(host)
    vp = child.vp(0)
    cfg = stimer_config_value(VMBUS_SINT, periodic=True, lazy=True) | 0x7 << 4  # vector bits kept
    vp.set_registers({stimer_config_register(2): cfg, stimer_count_register(2): 12345})
    assert vp.get_registers([stimer_config_register(2), stimer_count_register(2)]) == [cfg, 12345]
    assert timer_state(child, 0, 2) == {"due_ns": 1_234_500, "armed": True, "pending": False}


def test_stimer_enable_rules(host):
    child = new_guest(host)
    vp = child.vp(0)
    cfg, cnt = stimer_config_register(0), stimer_count_register(0)
    vp.set_registers({cfg: stimer_config_value(0)})            # SINTx 0: stays disabled
    assert vp.get_registers([cfg]) == [0]
    vp.set_registers({cfg: stimer_config_value(3, enable=False, auto_enable=True)})
    assert not timer_state(child, 0, 0)["armed"]
    vp.set_registers({cnt: 1000})                                # AutoEnable: COUNT enables it
    assert vp.get_registers([cfg])[0] & 1 and timer_state(child, 0, 0)["armed"]
    vp.set_registers({cnt: 0})                                   # COUNT 0 disables it
    assert not vp.get_registers([cfg])[0] & 1 and not timer_state(child, 0, 0)["armed"]
    vp.set_registers({cfg: stimer_config_value(3)})              # enabled with COUNT 0: idle
    assert vp.get_registers([cfg])[0] & 1 and not timer_state(child, 0, 0)["armed"]


def timer_messages(child, vp=0, sint=VMBUS_SINT):
    out = []
    while not (m := slot(child, vp, sint)).empty:
        out.append(m.timer())
        ack(child, vp, sint)
    return out


def test_one_shot_timer_expires_once_with_a_timer_message(host, guest):
    host.root.resume_partition(guest)
    vp = guest.vp(0)
    vp.set_registers({stimer_count_register(1): 20_000,           # 2 ms, absolute reference time
                      stimer_config_register(1): stimer_config_value(VMBUS_SINT)})
    host.run("1ms")
    assert slot(guest).empty
    host.run("5ms")
    m = slot(guest)
    assert (m.message_type, m.payload_size, m.origin) == (MessageType.TIMER_EXPIRED, 24, 0)
    assert m.timer() == (1, 20_000, 20_000)
    assert not vp.get_registers([stimer_config_register(1)])[0] & 1  # a one-shot disables itself
    ack(guest)
    host.run("20ms")
    assert slot(guest).empty


def test_periodic_timer_and_one_pending_message_per_timer(host, guest):
    host.root.resume_partition(guest)
    vp = guest.vp(0)
    vp.set_registers({stimer_count_register(0): 10_000,           # every 1 ms
                      stimer_config_register(0): stimer_config_value(VMBUS_SINT, periodic=True)})
    host.run("3.5ms")
    m = slot(guest)
    assert m.timer() == (0, 10_000, 10_000)
    # the 2 ms expiry found the slot busy (and flagged it); the 3 ms one was dropped, since the
    # timer's previous message still waits
    assert m.pending and queue_length(guest, 0, VMBUS_SINT) == 1 and timer_state(guest, 0, 0)["pending"]
    ack(guest)
    assert slot(guest).timer() == (0, 20_000, 35_000)  # delivered when the guest wrote EOM
    ack(guest)
    host.run("5.5ms")
    assert slot(guest).timer().expiration_time == 40_000


def test_reconfiguring_a_timer_cancels_its_armed_expiry(host, guest):
    host.root.resume_partition(guest)
    vp = guest.vp(0)
    vp.set_registers({stimer_count_register(0): 10_000,
                      stimer_config_register(0): stimer_config_value(VMBUS_SINT)})
    vp.set_registers({stimer_count_register(0): 30_000})            # moved to 3 ms
    host.run("2ms")
    assert slot(guest).empty
    host.run("4ms")
    assert slot(guest).timer().expiration_time == 30_000
    ack(guest)
    vp.set_registers({stimer_count_register(0): 50_000,
                      stimer_config_register(0): stimer_config_value(VMBUS_SINT)})
    vp.set_registers({stimer_config_register(0): 0})                # disabled again
    host.run("10ms")
    assert slot(guest).empty and not timer_state(guest, 0, 0)["armed"]


def test_one_shot_in_the_past_fires_now(host, guest):
    host.root.resume_partition(guest)
    host.run("2ms")
    guest.vp(0).set_registers({stimer_count_register(3): 1,
                               stimer_config_register(3): stimer_config_value(VMBUS_SINT)})
    assert timer_state(guest, 0, 3)["due_ns"] == 2_000_000
    host.run_for("1us")
    assert slot(guest).timer() == (3, 20_000, 20_000)


# ---- HvMessage ------------------------------------------------------------------------------------------

def raw_message(mtype: int, size: int, flags: int, origin: int, payload: bytes) -> bytes:
    return struct.pack("<IBBHQ", mtype, size, flags, 0, origin) + payload.ljust(PAYLOAD_MAX, b"\0")


@given(st.integers(0, 2**32 - 1), st.binary(max_size=PAYLOAD_MAX), st.integers(0, 255), st.integers(0, 2**64 - 1))
def test_hv_message_parse_round_trip(mtype, payload, flags, origin):
    m = HvMessage.parse(raw_message(mtype, len(payload), flags, origin, payload))
    assert int(m.message_type) == mtype
    assert (m.payload_size, m.payload, m.pending, m.origin) == (len(payload), payload, bool(flags & 1), origin)


@given(st.integers(PAYLOAD_MAX + 1, 255), st.binary(min_size=PAYLOAD_MAX, max_size=PAYLOAD_MAX))
def test_hv_message_parse_rejects_oversized_payload(size, payload):
    with pytest.raises(ValueError):
        HvMessage.parse(raw_message(1, size, 0, 0, payload))


@given(st.binary(max_size=600).filter(lambda b: len(b) != MESSAGE_SIZE))
def test_hv_message_parse_rejects_wrong_length(data):
    with pytest.raises(ValueError):
        HvMessage.parse(data)


def test_register_value_helpers():
    assert sint_value(0x30) == 0x30 and sint_value(0x30, masked=True) == 0x10030
    assert simp_value(5) == 0x5001 and siefp_value(5, enable=False) == 0x5000
    assert stimer_config_value(2, periodic=True, auto_enable=True) == 0x2000B
    with pytest.raises(ValueError):
        sint_value(256)
    with pytest.raises(ValueError):
        stimer_config_value(16)
    with pytest.raises(ValueError):
        stimer_config_register(4)
    with pytest.raises(ValueError):
        HvMessage.parse(raw_message(1, 0, 0, 0, b"")).timer()


# ---- a timer flood costs its own VM -------------------------------------------------------------------------

STIMER_MIN_PERIOD_NS = 100_000  # the default minimum period of a periodic synthetic timer (host.c)


def timer_flood(period_ticks: int | None, run_ns: int = 200_000_000):
    """One LP shared by a tick guest whose VP has a periodic timer of `period_ticks` (None: no
    timer) and a burning VM: (the tick VM's timer interrupts, its run time, the burner's run
    time) after `run_ns`."""
    host = new_host(logical_processors=1)
    ticker, burner = new_guest(host), new_guest(host)
    ticker.vp(0).run_builtin("tick", work="1us")
    burner.vp(0).run_builtin("burn")
    if period_ticks is not None:
        ticker.vp(0).set_registers({stimer_count_register(0): period_ticks,
                                    stimer_config_register(0): stimer_config_value(VMBUS_SINT, periodic=True)})
    for p in (ticker, burner):
        host.root.resume_partition(p)
    host.run(run_ns)
    intro = host.introspect
    return interrupt_count(ticker, 0, VMBUS_SINT), intro.run_time_ns(ticker), intro.run_time_ns(burner)


def test_a_100ns_periodic_timer_is_held_to_the_minimum_period_and_costs_its_own_vm():
    run_ns = 200_000_000
    _, _, burner_alone = timer_flood(None, run_ns)
    expiries, ticker_ns, burner_ns = timer_flood(1, run_ns)  # 1 tick = 100 ns
    assert 0 < expiries <= run_ns // STIMER_MIN_PERIOD_NS
    # each expiry is charged to the timer's VP (the expiry's interrupt, the message's delivery
    # and interrupt) and the tick guest's 1 us of work: 4 us per expiry at least
    assert ticker_ns >= expiries * 4_000
    assert burner_ns >= 0.9 * burner_alone
