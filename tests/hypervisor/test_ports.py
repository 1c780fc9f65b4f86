"""Ports and connections (hyperv-abi.md §1.4, threat model INV-MSG / INV-QUEUE): CreatePort,
ConnectPort, DeletePort, DisconnectPort, PostMessage and SignalEvent: each one's success path,
every error it can return (with the state digest unchanged), the 16-buffer limit, teardown with
a partition, and that messages travel only along a connection to a port. A stateful test checks
queue and slot behaviour against a model."""
from __future__ import annotations

import struct

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from hypervisor import CallCode, HvStatus, Privilege, Register, control
from hypervisor.abi import PARTITION_ID_SELF, PRIVILEGES_GUEST_DEFAULT
from hypervisor.synic import (PORT_MESSAGE_BUFFERS, MessageType, PortType, clear_message_slot, connection_target,
                              event_flag_set, port_counts, port_undelivered, queue_length, read_message_slot,
                              siefp_value, simp_value, sint_value)

from .conftest import check_conservation, expect, info, new_host, rejected
from .test_synic import (BASE_FLAG, CONN, EVENT_CONN, EVENT_PORT, FLAG_COUNT, PORT, VMBUS_SINT, ack, new_guest,
                         post, siefp_gpfn, simp_gpfn, slot, wire)

UNKNOWN_ID = 0x1234_5678
MSG, EVT = PortType.MESSAGE, PortType.EVENT


def create_port_in(port_pid, port_id, conn_pid, *, ptype=MSG, sint=VMBUS_SINT, vp=0, base=0, count=0,
                   port_vtl=0, min_vtl=0, rsvdz=0, info_rsvd=0, info_tail=0, proximity=0) -> bytes:
    return (struct.pack("<QIBBHQ", port_pid, port_id, port_vtl, min_vtl, rsvdz, conn_pid)
            + struct.pack("<IIIIHHI", int(ptype), info_rsvd, sint, vp, base, count, info_tail)
            + struct.pack("<Q", proximity))


def connect_port_in(conn_pid, conn_id, port_pid, port_id, *, ptype=MSG, vtl=0, rsvd=b"\0\0\0", rsvd2=0,
                    info_rsvd=0, monitor=0, tail=(0, 0), proximity=0) -> bytes:
    return (struct.pack("<QIB3sQII", conn_pid, conn_id, vtl, rsvd, port_pid, port_id, rsvd2)
            + struct.pack("<IIQQQ", int(ptype), info_rsvd, monitor, *tail) + struct.pack("<Q", proximity))


def post_in(conn_id, mtype=MessageType.VMBUS, payload=b"", *, size=None, rsvdz=0) -> bytes:
    size = len(payload) if size is None else size
    return struct.pack("<IIII", conn_id, rsvdz, int(mtype), size) + payload.ljust(240, b"\0")


def signal_in(conn_id, flag=0, rsvdz=0) -> bytes:
    return struct.pack("<IHH", conn_id, flag, rsvdz)


CREATE, CONNECT = control(CallCode.CREATE_PORT), control(CallCode.CONNECT_PORT)
DELETE, DISCONNECT = control(CallCode.DELETE_PORT), control(CallCode.DISCONNECT_PORT)
POST, SIGNAL = control(CallCode.POST_MESSAGE), control(CallCode.SIGNAL_EVENT)
SIGNAL_FAST = control(CallCode.SIGNAL_EVENT, fast=True)


def bit(p: Privilege) -> int:
    return 1 << int(p)


@pytest.fixture
def guest(host):
    child = new_guest(host)
    wire(host, child)
    return child


def enable_root_synic(host) -> int:
    """The root's VP 0 gets SIM and SIEF pages (two of its own pages) and SINT2, and its pool a
    few pages for message ports. Returns the SIM page's GPFN."""
    root = host.root
    simp, siefp = host.root_memory.allocate(2)
    root.deposit_memory(None, host.root_memory.allocate(4))
    root.vp(0).set_registers({Register.SIMP: simp_value(simp), Register.SIEFP: siefp_value(siefp),
                              Register.SCONTROL: 1, Register.SINT2: sint_value(0x32)})
    return simp


def root_port(host, port_id: int, conn_partition, *, ptype=MSG) -> None:
    """A port in the root for `conn_partition`, delivered to the root's VP 0 SINT 2 (the VMBus
    direction: child -> root)."""
    host.root.create_port(None, port_id, port_type=ptype, target_sint=VMBUS_SINT, target_vp=0,
                          flag_count=0 if ptype == MSG else 1, connection_partition=conn_partition)


# ---- CreatePort ---------------------------------------------------------------------------------------

def free_pages(host, *parts) -> list[int]:
    return [info(host, p)["pool_free"] for p in parts]


def test_every_port_takes_one_page_of_its_owners_pool(host):
    """Threat model A7: a port comes from its owner's (the receiver's) pool, whatever its type."""
    child = new_guest(host)
    before = info(host, child)
    host.root.create_port(child, 1, port_type=MSG, target_sint=2, target_vp=0, connection_partition=host.root)
    after = info(host, child)
    assert (after["pool_free"], after["pool_used"]) == (before["pool_free"] - 1, before["pool_used"] + 1)
    host.root.create_port(child, 2, port_type=EVT, target_sint=2, target_vp=0, base_flag=0, flag_count=2048,
                          connection_partition=host.root)
    assert (info(host, child)["pool_free"], info(host, child)["pool_used"]) == \
        (after["pool_free"] - 1, after["pool_used"] + 1)
    assert info(host, host.root)["pool_used"] == 0   # the caller pays nothing for its child's ports
    assert port_counts(child) == (2, 0) and port_counts(host.root) == (0, 0)
    assert port_undelivered(child, 1) == 0 and port_undelivered(child, 2) == 0
    check_conservation(host)


def test_port_ids_are_per_partition(host):
    a, b = new_guest(host), new_guest(host)
    for p in (a, b):
        host.root.create_port(p, 7, port_type=MSG, target_sint=2, target_vp=0, connection_partition=host.root)
    host.root.create_port(a, 0xFFFFFF, port_type=MSG, target_sint=2, target_vp=0, connection_partition=a)
    assert port_counts(a) == (2, 0) and port_counts(b) == (1, 0)


@pytest.mark.parametrize("kw,status", [
    (dict(port_vtl=1), HvStatus.INVALID_PARAMETER), (dict(min_vtl=1), HvStatus.INVALID_PARAMETER),
    (dict(rsvdz=1), HvStatus.INVALID_PARAMETER), (dict(info_rsvd=1), HvStatus.INVALID_PARAMETER),
    (dict(info_tail=1), HvStatus.INVALID_PARAMETER), (dict(base=1), HvStatus.INVALID_PARAMETER),
    (dict(count=1), HvStatus.INVALID_PARAMETER), (dict(ptype=0), HvStatus.INVALID_PARAMETER),
    (dict(ptype=PortType.MONITOR), HvStatus.INVALID_PARAMETER), (dict(ptype=4), HvStatus.INVALID_PARAMETER),
    (dict(sint=16), HvStatus.INVALID_PARAMETER), (dict(sint=0xFFFFFFFF), HvStatus.INVALID_PARAMETER),
    (dict(ptype=EVT, count=0), HvStatus.INVALID_PARAMETER),
    (dict(ptype=EVT, base=2000, count=49), HvStatus.INVALID_PARAMETER),
    (dict(ptype=EVT, base=1, count=2048), HvStatus.INVALID_PARAMETER),
    (dict(ptype=EVT, base=0, count=1, info_tail=1), HvStatus.INVALID_PARAMETER),
    (dict(proximity=1), HvStatus.INVALID_PROXIMITY_DOMAIN_INFO),
    (dict(vp=1), HvStatus.INVALID_VP_INDEX), (dict(vp=64), HvStatus.INVALID_VP_INDEX),
    (dict(vp=0xFFFFFFFF), HvStatus.INVALID_VP_INDEX),  # HV_ANY_VP: hvsim binds ports to one VP
])
def test_create_port_bad_input(host, kw, status):
    child = new_guest(host)
    expect(host.root.vp(0), CREATE, create_port_in(child.id, 1, PARTITION_ID_SELF, **kw), status)


def test_create_port_partition_checks(host):
    root = host.root
    child = new_guest(host)
    vp = root.vp(0)
    for port_pid, conn_pid in ((UNKNOWN_ID, PARTITION_ID_SELF), (child.id, UNKNOWN_ID), (0, PARTITION_ID_SELF),
                               (child.id, 0)):
        expect(vp, CREATE, create_port_in(port_pid, 1, conn_pid), HvStatus.INVALID_PARTITION_ID)
    created = root.create_partition()
    expect(vp, CREATE, create_port_in(created.id, 1, PARTITION_ID_SELF), HvStatus.INVALID_PARTITION_STATE)
    root.finalize_partition(child)
    expect(vp, CREATE, create_port_in(child.id, 1, PARTITION_ID_SELF), HvStatus.INVALID_PARTITION_STATE)


def test_create_port_bad_ids(host, guest):
    vp = host.root.vp(0)
    expect(vp, CREATE, create_port_in(guest.id, PORT, PARTITION_ID_SELF), HvStatus.INVALID_PORT_ID)  # taken
    expect(vp, CREATE, create_port_in(guest.id, PORT, PARTITION_ID_SELF, ptype=EVT, count=1),
           HvStatus.INVALID_PORT_ID)
    expect(vp, CREATE, create_port_in(guest.id, 0x0100_0001, PARTITION_ID_SELF), HvStatus.INVALID_PORT_ID)


@pytest.mark.parametrize("ptype", [MSG, EVT])
def test_create_port_with_an_empty_pool_is_insufficient_memory(host, ptype):
    child = new_guest(host, pool=3)  # initialize, VP 0 and one GPA leaf use all three
    assert info(host, child)["pool_free"] == 0
    with rejected(HvStatus.INSUFFICIENT_MEMORY, host.root):
        host.root.create_port(child, 1, port_type=ptype, target_sint=2, target_vp=0,
                              flag_count=0 if ptype == MSG else 1, connection_partition=host.root)
    assert port_counts(child) == (0, 0)


def test_a_connection_takes_one_page_of_its_senders_pool(host):
    """Threat model A7: a connection comes from the sender's (the connection partition's) pool,
    not the port owner's nor the caller's; each connection costs exactly one page."""
    root = host.root
    a, b = new_guest(host), new_guest(host)
    root.create_port(b, 9, port_type=MSG, target_sint=VMBUS_SINT, target_vp=0, connection_partition=a)
    root.create_port(b, 10, port_type=EVT, target_sint=VMBUS_SINT, target_vp=0, flag_count=1,
                     connection_partition=a)
    before = free_pages(host, root, a, b)
    root.connect_port(a, 1, b, 9)
    assert free_pages(host, root, a, b) == [before[0], before[1] - 1, before[2]]
    root.connect_port(a, 2, b, 10, port_type=EVT)
    assert free_pages(host, root, a, b) == [before[0], before[1] - 2, before[2]]
    a.post_message(1, 1, b"paid for")
    assert slot(b).payload == b"paid for"
    check_conservation(host)


@pytest.mark.parametrize("ptype", [MSG, EVT])
def test_connect_with_an_empty_pool_is_insufficient_memory(host, ptype):
    root = host.root
    a, b = new_guest(host, pool=3), new_guest(host)  # a's pool is used up by initialize, VP 0, a leaf
    root.create_port(b, 9, port_type=ptype, target_sint=VMBUS_SINT, target_vp=0,
                     flag_count=0 if ptype == MSG else 1, connection_partition=a)
    assert info(host, a)["pool_free"] == 0
    with rejected(HvStatus.INSUFFICIENT_MEMORY, root):
        root.connect_port(a, 1, b, 9, port_type=ptype)
    assert port_counts(a) == (0, 0)
    root.deposit_memory(a, host.root_memory.allocate(1))
    root.connect_port(a, 1, b, 9, port_type=ptype)
    assert port_counts(a) == (0, 1) and info(host, a)["pool_free"] == 0


def test_disconnect_and_delete_port_give_the_pages_back(host):
    root = host.root
    a, b = new_guest(host), new_guest(host)
    before, owners = free_pages(host, root, a, b), host.introspect.page_owners()
    for port, ptype in ((9, MSG), (10, EVT)):
        root.create_port(b, port, port_type=ptype, target_sint=VMBUS_SINT, target_vp=0,
                         flag_count=0 if ptype == MSG else 1, connection_partition=a)
        root.connect_port(a, port, b, port, port_type=ptype)
    assert free_pages(host, root, a, b) == [before[0], before[1] - 2, before[2] - 2]
    root.disconnect_port(a, 9)
    root.delete_port(b, 10)       # a's connection 10 dangles and keeps its page
    assert free_pages(host, root, a, b) == [before[0], before[1] - 1, before[2] - 1]
    root.delete_port(b, 9)
    root.disconnect_port(a, 10)
    assert free_pages(host, root, a, b) == before
    assert host.introspect.page_owners() == owners
    check_conservation(host)


def _teardown_world(wired: bool):
    """The root, A and B; if `wired`, ports of each for the other and connections both ways."""
    host = new_host()
    root = host.root
    a, b = new_guest(host), new_guest(host)
    if wired:
        for owner, peer in ((a, b), (b, a)):
            for port, ptype in ((9, MSG), (10, EVT)):
                root.create_port(owner, port, port_type=ptype, target_sint=VMBUS_SINT, target_vp=0,
                                 flag_count=0 if ptype == MSG else 1, connection_partition=peer)
                root.connect_port(peer, port, owner, port, port_type=ptype)
    return host, a, b


def test_teardown_gives_the_pages_of_ports_and_connections_back():
    """Deleting A returns its pool, with the pages its ports and connections held, to the root;
    B's connections to A's ports dangle and keep their pages until B disconnects them. The page
    owners end as they do for the same partitions never wired."""
    plain, plain_a, plain_b = _teardown_world(False)
    host, a, b = _teardown_world(True)
    b_free = info(plain, plain_b)["pool_free"]
    assert info(host, b)["pool_free"] == b_free - 4
    for h, p in ((host, a), (plain, plain_a)):
        h.root.finalize_partition(p)
        h.root.delete_partition(p)
    assert info(host, b)["pool_free"] == b_free - 4      # its two ports and two dangling connections
    host.root.disconnect_port(b, 9)
    host.root.disconnect_port(b, 10)
    host.root.delete_port(b, 9)
    host.root.delete_port(b, 10)
    assert info(host, b)["pool_free"] == b_free
    assert host.introspect.page_owners() == plain.introspect.page_owners()
    check_conservation(host)


def test_children_cannot_create_ports_without_the_privilege(host, guest):
    with rejected(HvStatus.ACCESS_DENIED, guest):
        guest.create_port(None, 5, port_type=MSG, target_sint=2, target_vp=0, connection_partition=None)
    with rejected(HvStatus.ACCESS_DENIED, guest):
        guest.delete_port(None, PORT)


def test_a_child_with_create_port_reaches_only_itself(host):
    a = new_guest(host, privileges=PRIVILEGES_GUEST_DEFAULT | bit(Privilege.CREATE_PORT))
    b = new_guest(host)
    a.create_port(None, 5, port_type=MSG, target_sint=2, target_vp=0, connection_partition=None)
    assert port_counts(a) == (1, 0)
    with rejected(HvStatus.INVALID_PARTITION_ID, a):
        a.create_port(b, 5, port_type=MSG, target_sint=2, target_vp=0, connection_partition=None)
    with rejected(HvStatus.INVALID_PARTITION_ID, a):
        a.create_port(None, 6, port_type=MSG, target_sint=2, target_vp=0, connection_partition=host.root)


# ---- ConnectPort ----------------------------------------------------------------------------------------

def test_connect_port(host, guest):
    assert connection_target(host.root, CONN) == (guest.id, PORT)
    assert connection_target(host.root, EVENT_CONN) == (guest.id, EVENT_PORT)
    assert port_counts(host.root) == (0, 2)
    with pytest.raises(LookupError):
        connection_target(host.root, 0x999)
    # two connections of one partition may lead to the same port
    host.root.deposit_memory(None, host.root_memory.allocate(1))   # the second connection's page
    host.root.connect_port(None, 0x77, guest, PORT)
    host.root.post_message(0x77, 1, b"via the second")
    assert slot(guest).payload == b"via the second"


@pytest.mark.parametrize("kw,status", [
    (dict(vtl=1), HvStatus.INVALID_PARAMETER), (dict(rsvd=b"\0\1\0"), HvStatus.INVALID_PARAMETER),
    (dict(rsvd2=1), HvStatus.INVALID_PARAMETER), (dict(info_rsvd=1), HvStatus.INVALID_PARAMETER),
    (dict(monitor=0x1000), HvStatus.INVALID_PARAMETER), (dict(tail=(0, 1)), HvStatus.INVALID_PARAMETER),
    (dict(ptype=EVT), HvStatus.INVALID_PARAMETER), (dict(ptype=PortType.MONITOR), HvStatus.INVALID_PARAMETER),
    (dict(ptype=0), HvStatus.INVALID_PARAMETER), (dict(proximity=1), HvStatus.INVALID_PROXIMITY_DOMAIN_INFO),
])
def test_connect_port_bad_input(host, guest, kw, status):
    expect(host.root.vp(0), CONNECT, connect_port_in(PARTITION_ID_SELF, 0x55, guest.id, PORT, **kw), status)


def test_connect_port_errors(host, guest):
    vp = host.root.vp(0)
    other = new_guest(host)
    cases = [
        (connect_port_in(UNKNOWN_ID, 0x55, guest.id, PORT), HvStatus.INVALID_PARTITION_ID),
        (connect_port_in(PARTITION_ID_SELF, 0x55, UNKNOWN_ID, PORT), HvStatus.INVALID_PARTITION_ID),
        (connect_port_in(PARTITION_ID_SELF, 0x55, guest.id, 0x4242), HvStatus.INVALID_PORT_ID),
        (connect_port_in(PARTITION_ID_SELF, 0x55, guest.id, 0x0100_0000 | PORT), HvStatus.INVALID_PORT_ID),
        (connect_port_in(PARTITION_ID_SELF, CONN, guest.id, PORT), HvStatus.INVALID_CONNECTION_ID),  # taken
        (connect_port_in(PARTITION_ID_SELF, 0x0100_0055, guest.id, PORT), HvStatus.INVALID_CONNECTION_ID),
        # the port was created for the root: another child may not be given a connection to it
        (connect_port_in(other.id, 0x55, guest.id, PORT), HvStatus.ACCESS_DENIED),
    ]
    for data, status in cases:
        expect(vp, CONNECT, data, status)
    host.root.finalize_partition(other)
    expect(vp, CONNECT, connect_port_in(other.id, 0x55, guest.id, PORT), HvStatus.INVALID_PARTITION_STATE)


def test_children_cannot_connect_without_the_privilege(host, guest):
    with rejected(HvStatus.ACCESS_DENIED, guest):
        guest.connect_port(None, 1, guest, PORT)
    with rejected(HvStatus.ACCESS_DENIED, guest):
        guest.disconnect_port(None, 1)


# ---- DeletePort -------------------------------------------------------------------------------------------

def test_delete_port_frees_its_page_drops_its_queue_and_dangles_connections(host, guest):
    root = host.root
    for i in range(4):
        post(host, b"m%d" % i)
    assert queue_length(guest, 0, VMBUS_SINT) == 3
    used = info(host, guest)["pool_used"]
    root.delete_port(guest, PORT)
    assert info(host, guest)["pool_used"] == used - 1
    assert queue_length(guest, 0, VMBUS_SINT) == 0
    assert slot(guest).payload == b"m0"  # already delivered: the guest keeps it (TLFS)
    assert connection_target(root, CONN) is None and connection_target(root, EVENT_CONN) == (guest.id, EVENT_PORT)
    assert port_counts(guest) == (1, 0) and port_counts(root) == (0, 2)
    with pytest.raises(LookupError):
        port_undelivered(guest, PORT)
    with rejected(HvStatus.INVALID_PORT_ID, root):
        post(host, b"late")
    # a new port with the same id does not revive the old connection
    root.create_port(guest, PORT, port_type=MSG, target_sint=2, target_vp=0, connection_partition=root)
    with rejected(HvStatus.INVALID_PORT_ID, root):
        post(host, b"late")
    root.delete_port(guest, EVENT_PORT)
    with rejected(HvStatus.INVALID_PORT_ID, root):
        root.signal_event(EVENT_CONN, 0)
    check_conservation(host)


def test_delete_port_errors(host, guest):
    vp = host.root.vp(0)
    expect(vp, DELETE, struct.pack("<QII", guest.id, 0x4242, 0), HvStatus.INVALID_PORT_ID)
    expect(vp, DELETE, struct.pack("<QII", guest.id, 0x0100_0000 | PORT, 0), HvStatus.INVALID_PORT_ID)
    expect(vp, DELETE, struct.pack("<QII", UNKNOWN_ID, PORT, 0), HvStatus.INVALID_PARTITION_ID)
    expect(vp, DELETE, struct.pack("<QII", guest.id, PORT, 1), HvStatus.INVALID_PARAMETER)
    expect(vp, DELETE, struct.pack("<QII", PARTITION_ID_SELF, PORT, 0), HvStatus.INVALID_PORT_ID)  # root's own
    host.root.finalize_partition(guest)
    expect(vp, DELETE, struct.pack("<QII", guest.id, PORT, 0), HvStatus.INVALID_PARTITION_STATE)


def test_delete_and_disconnect_as_fast_calls(host, guest):
    vp = host.root.vp(0)
    expect(vp, control(CallCode.DISCONNECT_PORT, fast=True), struct.pack("<QII", PARTITION_ID_SELF, CONN, 0))
    expect(vp, control(CallCode.DELETE_PORT, fast=True), struct.pack("<QII", guest.id, PORT, 0))
    assert port_counts(guest) == (1, 0) and port_counts(host.root) == (0, 1)


# ---- DisconnectPort ------------------------------------------------------------------------------------------

def test_disconnect_keeps_queued_messages(host, guest):
    post(host, b"a")
    post(host, b"b")
    host.root.disconnect_port(None, CONN)
    with pytest.raises(LookupError):
        connection_target(host.root, CONN)
    with rejected(HvStatus.INVALID_CONNECTION_ID, host.root):
        post(host, b"c")
    assert port_undelivered(guest, PORT) == 1
    ack(guest)
    assert slot(guest).payload == b"b"


def test_disconnect_errors(host, guest):
    vp = host.root.vp(0)
    expect(vp, DISCONNECT, struct.pack("<QII", PARTITION_ID_SELF, 0x4242, 0), HvStatus.INVALID_CONNECTION_ID)
    expect(vp, DISCONNECT, struct.pack("<QII", PARTITION_ID_SELF, CONN, 1), HvStatus.INVALID_PARAMETER)
    expect(vp, DISCONNECT, struct.pack("<QII", UNKNOWN_ID, CONN, 0), HvStatus.INVALID_PARTITION_ID)
    expect(vp, DISCONNECT, struct.pack("<QII", guest.id, CONN, 0), HvStatus.INVALID_CONNECTION_ID)  # root's, not its


# ---- PostMessage -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("data", [
    post_in(CONN, 0, b"x"), post_in(CONN, 0x8000_0000, b"x"), post_in(CONN, MessageType.TIMER_EXPIRED, b"x"),
    post_in(CONN, 0xFFFF_FFFF, b"x"), post_in(CONN, 1, bytes(240), size=241), post_in(CONN, 1, size=0xFFFF_FFFF),
    post_in(CONN, 1, b"x", rsvdz=1),
])
def test_post_message_bad_input(host, guest, data):
    expect(host.root.vp(0), POST, data, HvStatus.INVALID_PARAMETER)
    assert queue_length(guest, 0, VMBUS_SINT) == 0 and slot(guest).empty


def test_post_message_connection_errors(host, guest):
    vp = host.root.vp(0)
    expect(vp, POST, post_in(0x4242, 1, b"x"), HvStatus.INVALID_CONNECTION_ID)
    expect(vp, POST, post_in(0x0100_0000 | CONN, 1, b"x"), HvStatus.INVALID_CONNECTION_ID)
    expect(vp, POST, post_in(EVENT_CONN, 1, b"x"), HvStatus.INVALID_CONNECTION_ID)  # an event connection
    expect(vp, SIGNAL, signal_in(CONN), HvStatus.INVALID_CONNECTION_ID)           # a message connection
    with pytest.raises(ValueError):
        host.root.post_message(CONN, 1, bytes(241))  # the wrapper cannot encode it


def test_post_message_needs_the_privilege(host):
    a = new_guest(host, privileges=PRIVILEGES_GUEST_DEFAULT & ~bit(Privilege.POST_MESSAGES))
    enable_root_synic(host)
    root_port(host, 0x30, a)
    host.root.connect_port(a, 1, None, 0x30)
    with rejected(HvStatus.ACCESS_DENIED, a):
        a.post_message(1, 1, b"x")


def test_post_message_to_a_deleted_vp(host):
    child = new_guest(host, vps=(0, 1))
    wire(host, child, vp=1)
    host.root.delete_vp(child, 1)
    with rejected(HvStatus.INVALID_VP_INDEX, host.root):
        post(host, b"x")


def test_sixteen_buffers_per_port_with_the_simp_disabled(host, guest):
    guest.vp(0).set_registers({Register.SIMP: simp_value(simp_gpfn(), enable=False)})
    for i in range(PORT_MESSAGE_BUFFERS):
        post(host, b"%d" % i)
    assert port_undelivered(guest, PORT) == 16
    with rejected(HvStatus.INSUFFICIENT_BUFFERS, host.root):
        post(host, b"17th")
    assert queue_length(guest, 0, VMBUS_SINT) == 16


def test_seventeenth_undelivered_message_is_refused(host, guest):
    post(host, b"in the slot")                  # delivered: holds no buffer
    for i in range(16):
        post(host, b"%d" % i)
    assert port_undelivered(guest, PORT) == 16
    with rejected(HvStatus.INSUFFICIENT_BUFFERS, host.root):
        post(host, b"one too many")
    # event ports share no buffers: signalling still works
    host.root.signal_event(EVENT_CONN, 0)
    # once the guest takes one, its buffer is free again and order is kept
    ack(guest)
    post(host, b"16")
    seen = []
    while not slot(guest).empty:
        seen.append(slot(guest).payload)
        ack(guest)
    assert seen == [b"%d" % i for i in range(17)]


def test_a_full_port_does_not_block_another_port(host, guest):
    root = host.root
    root.create_port(guest, 0x40, port_type=MSG, target_sint=VMBUS_SINT, target_vp=0, connection_partition=root)
    root.deposit_memory(None, host.root_memory.allocate(1))   # the connection's page
    root.connect_port(None, 0x41, guest, 0x40)
    for i in range(17):
        post(host, b"%d" % i)
    root.post_message(0x41, 1, b"other port")
    assert port_undelivered(guest, 0x40) == 1 and queue_length(guest, 0, VMBUS_SINT) == 17


# ---- SignalEvent ----------------------------------------------------------------------------------------------

def test_signal_event_linux_fast_form(host, guest):
    """Linux: hv_do_fast_hypercall8(HVCALL_SIGNAL_EVENT, connection_id): RDX holds the id alone."""
    expect(host.root.vp(0), SIGNAL_FAST, struct.pack("<Q", EVENT_CONN))
    assert event_flag_set(guest, siefp_gpfn(), VMBUS_SINT, BASE_FLAG)
    expect(host.root.vp(0), SIGNAL, signal_in(EVENT_CONN, FLAG_COUNT - 1))  # memory form
    assert event_flag_set(guest, siefp_gpfn(), VMBUS_SINT, BASE_FLAG + FLAG_COUNT - 1)


def test_signal_event_errors(host, guest):
    vp = host.root.vp(0)
    for data, status in [
        (signal_in(0x4242), HvStatus.INVALID_CONNECTION_ID),
        (signal_in(EVENT_CONN, FLAG_COUNT), HvStatus.INVALID_PARAMETER),
        (signal_in(EVENT_CONN, 0xFFFF), HvStatus.INVALID_PARAMETER),
        (signal_in(EVENT_CONN, 0, rsvdz=1), HvStatus.INVALID_PARAMETER),
    ]:
        expect(vp, SIGNAL_FAST, data, status)
        expect(vp, SIGNAL, data, status)
    guest.vp(0).set_registers({Register.SINT2: sint_value(0x32, masked=True)})
    expect(vp, SIGNAL_FAST, signal_in(EVENT_CONN), HvStatus.INVALID_SYNIC_STATE)
    guest.vp(0).set_registers({Register.SINT2: sint_value(0x32), Register.SCONTROL: 0})
    expect(vp, SIGNAL_FAST, signal_in(EVENT_CONN), HvStatus.INVALID_SYNIC_STATE)


def test_signal_event_needs_the_privilege(host):
    a = new_guest(host, privileges=PRIVILEGES_GUEST_DEFAULT & ~bit(Privilege.SIGNAL_EVENTS))
    enable_root_synic(host)
    root_port(host, 0x31, a, ptype=EVT)
    host.root.connect_port(a, 1, None, 0x31, port_type=EVT)
    with rejected(HvStatus.ACCESS_DENIED, a):
        a.signal_event(1)


# ---- messages travel only along connections ---------------------------------------------------------------------

def test_child_to_root_message_carries_the_port_id(host):
    a = new_guest(host)
    simp = enable_root_synic(host)
    root_port(host, 0x30, a)
    host.root.connect_port(a, 4, None, 0x30)
    a.post_message(4, MessageType.VMBUS, b"initiate contact")
    m = read_message_slot(host.root, simp, VMBUS_SINT)
    assert (m.origin, m.payload) == (0x30, b"initiate contact")


def test_a_child_cannot_use_another_childs_connection(host):
    a, b = new_guest(host), new_guest(host)
    enable_root_synic(host)
    root_port(host, 0x30, a)
    host.root.connect_port(a, 4, None, 0x30)
    with rejected(HvStatus.INVALID_CONNECTION_ID, b):
        b.post_message(4, 1, b"spoof")
    # the answer is the same as for an id nobody has: no oracle on other partitions' objects
    with rejected(HvStatus.INVALID_CONNECTION_ID, b):
        b.post_message(5, 1, b"spoof")


def test_child_to_child_only_where_the_root_connected_them(host):
    root = host.root
    a, b = new_guest(host), new_guest(host)
    root.create_port(b, 9, port_type=MSG, target_sint=VMBUS_SINT, target_vp=0, connection_partition=a)
    with rejected(HvStatus.ACCESS_DENIED, root):
        root.connect_port(b, 1, b, 9)  # b itself is not the allowed connection partition
    root.connect_port(a, 1, b, 9)
    a.post_message(1, 1, b"a to b")
    assert slot(b).payload == b"a to b" and slot(b).origin == 9
    with rejected(HvStatus.INVALID_CONNECTION_ID, b):
        b.post_message(1, 1, b"b to a")
    assert slot(a).empty


def test_a_sim_page_given_away_is_never_written(host):
    """The root names one of its pages as its SIM page, then deposits that page into a child's
    pool (it becomes the hypervisor's): delivery must not write into it."""
    a = new_guest(host)
    simp = enable_root_synic(host)
    root_port(host, 0x30, a)
    host.root.connect_port(a, 4, None, 0x30)
    host.root.deposit_memory(a, [simp])
    a.post_message(4, 1, b"where does this go")
    assert queue_length(host.root, 0, VMBUS_SINT) == 1  # not delivered: the root no longer owns it
    assert simp in host.introspect.pool_pages(a) and host.introspect.owner_of(simp) == "hypervisor"
    check_conservation(host)


def test_post_message_cannot_be_fast(host, guest):
    expect(host.root.vp(0), control(CallCode.POST_MESSAGE, fast=True), post_in(CONN, 1, b"x")[:16],
           HvStatus.INVALID_HYPERCALL_INPUT)
    expect(host.root.vp(0), control(CallCode.CREATE_PORT, fast=True), bytes(16), HvStatus.INVALID_HYPERCALL_INPUT)


# ---- partition deletion ------------------------------------------------------------------------------------------

def test_deleting_the_port_partition_dangles_connections(host, guest):
    root = host.root
    root.finalize_partition(guest)
    root.delete_partition(guest)
    assert connection_target(root, CONN) is None and connection_target(root, EVENT_CONN) is None
    with rejected(HvStatus.INVALID_PORT_ID, root):
        post(host, b"x")
    with rejected(HvStatus.INVALID_PORT_ID, root):
        root.signal_event(EVENT_CONN)
    root.disconnect_port(None, CONN)
    assert port_counts(root) == (0, 1)
    check_conservation(host)


def test_a_finalized_partitions_ports_take_nothing(host, guest):
    """A finalized partition's VPs never run again: its ports refuse what is posted or signalled
    to them as a deleted port would (INVALID_PORT_ID), instead of queueing it for good."""
    root = host.root
    root.finalize_partition(guest)
    with rejected(HvStatus.INVALID_PORT_ID, root):
        post(host, b"x")
    with rejected(HvStatus.INVALID_PORT_ID, root):
        root.signal_event(EVENT_CONN)
    assert queue_length(guest, 0, VMBUS_SINT) == 0 and port_undelivered(guest, PORT) == 0


def test_deleting_the_sender_drops_its_queued_messages_and_connections(host):
    root = host.root
    a, b = new_guest(host), new_guest(host)
    root.create_port(b, 9, port_type=MSG, target_sint=VMBUS_SINT, target_vp=0, connection_partition=a)
    root.connect_port(a, 1, b, 9)
    root.create_port(b, 10, port_type=MSG, target_sint=VMBUS_SINT, target_vp=0, connection_partition=root)
    root.deposit_memory(None, host.root_memory.allocate(1))   # the root's connection's page
    root.connect_port(None, 1, b, 10)
    for i in range(3):
        a.post_message(1, 1, b"from a %d" % i)
    root.post_message(1, 1, b"from root")
    assert queue_length(b, 0, VMBUS_SINT) == 3
    root.finalize_partition(a)
    root.delete_partition(a)
    assert queue_length(b, 0, VMBUS_SINT) == 1 and port_undelivered(b, 9) == 0
    assert slot(b).payload == b"from a 0"  # delivered before: the guest's own copy stays
    ack(b)
    assert slot(b).payload == b"from root"
    assert port_counts(b) == (2, 0)
    check_conservation(host)


def test_many_partitions_and_ports_tear_down_cleanly():
    host = new_host(memory="64MiB")
    kids = [new_guest(host) for _ in range(5)]
    for i, k in enumerate(kids):
        wire(host, k, conn_base=0x100 * i)
        for j in range(3):
            host.root.post_message(CONN + 0x100 * i, 1, b"%d" % j)
    for k in kids[::2]:
        host.root.finalize_partition(k)
        host.root.delete_partition(k)
    assert port_counts(host.root) == (0, 10)
    assert [connection_target(host.root, CONN + 0x100 * i) is None for i in range(5)] == [True, False] * 2 + [True]
    check_conservation(host)
    # the remaining ports, connections and queued messages go with the host (ASan checks the frees)


# ---- the queue and the slot against a model -----------------------------------------------------------------------

class PortMachine(RuleBasedStateMachine):
    """Root posts on one connection to a child's message port; the guest takes messages, toggles
    its SIM page and masks its SINT. The model: the hypervisor's FIFO, the slot's occupant and the
    MessagePending bit in guest memory. Every refused post must leave the state digest unchanged
    (`expect` checks it)."""

    def __init__(self):
        super().__init__()
        self.host = new_host()
        self.guest = new_guest(self.host)
        wire(self.host, self.guest)
        self.queue: list[int] = []     # posted, not yet in the slot
        self.slot: int | None = None   # the message in the SIM slot
        self.flag = False              # MessagePending as stored in the slot
        self.simp = True
        self.masked = False
        self.next = 0

    def pump(self):
        if not self.simp or not self.queue:
            return
        if self.slot is None:
            self.slot = self.queue.pop(0)
            self.flag = bool(self.queue)
        else:
            self.flag = True

    @rule()
    def post(self):
        data = post_in(CONN, 1, struct.pack("<I", self.next))
        if self.masked:
            expect(self.host.root.vp(0), POST, data, HvStatus.INVALID_SYNIC_STATE)
        elif len(self.queue) == PORT_MESSAGE_BUFFERS:
            expect(self.host.root.vp(0), POST, data, HvStatus.INSUFFICIENT_BUFFERS)
        else:
            expect(self.host.root.vp(0), POST, data)
            self.queue.append(self.next)
            self.next += 1
            self.pump()

    @rule(n=st.integers(2, 20))
    def post_burst(self, n):
        for _ in range(n):
            self.post()

    @rule(always_eom=st.booleans())
    def guest_takes_the_message(self, always_eom):
        """Clear the slot, then write EOM if MessagePending (Linux) or always."""
        pending = clear_message_slot(self.guest, simp_gpfn(), VMBUS_SINT)
        assert pending == self.flag
        self.slot = None
        if pending or always_eom:
            self.guest.vp(0).set_registers({Register.EOM: 0})
            self.pump()

    @rule()
    def toggle_simp(self):
        self.simp = not self.simp
        self.guest.vp(0).set_registers({Register.SIMP: simp_value(simp_gpfn(), self.simp)})
        self.pump()  # enabling the page delivers what waited

    @rule()
    def toggle_mask(self):
        self.masked = not self.masked
        self.guest.vp(0).set_registers({Register.SINT2: sint_value(0x32, masked=self.masked)})

    @invariant()
    def matches_the_model(self):
        assert queue_length(self.guest, 0, VMBUS_SINT) == len(self.queue)
        assert port_undelivered(self.guest, PORT) == len(self.queue) <= PORT_MESSAGE_BUFFERS
        m = slot(self.guest)
        assert m.pending == self.flag
        if self.slot is None:
            assert m.empty
        else:
            assert struct.unpack("<I", m.payload)[0] == self.slot


PortMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=50, deadline=None)
TestPortMachine = PortMachine.TestCase
